"""ASGI middleware that sees every HTTP request before FastAPI does: the API key, checked before anything else is
read, and the body, read up to a limit before any of it is parsed."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from armm.serving.protocol import APIError


async def refuse(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``error`` in OpenAI's shape without calling the app."""
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


class RequireKey:
    """Every HTTP route, the documentation's included, answers 401 unless the request carries
    ``Authorization: Bearer <api_key>`` (compared in constant time); nothing of the body is read before."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.api_key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.authorized(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        await refuse(APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                              code="invalid_api_key"), scope, receive, send)

    def authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key)


class LimitBody:
    """Reads each HTTP request's body, counting its bytes as they arrive, and answers 413 as soon as it passes
    ``max_bytes`` (at once when ``Content-Length`` says it will), before the app parses any of it; a body within
    the limit is handed to the app whole. Whatever the client still sends after a 413 is discarded unread."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        try:
            body = None if length.isdigit() and int(length) > self.max_bytes else await self.read(receive)
        except ClientDisconnect:
            return
        if body is None:
            await refuse(APIError(413, f"the request body is larger than this server's limit of {self.max_bytes} "
                                       "bytes (armm serve --max_body_bytes); send a smaller request",
                                  code="request_too_large"), scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)

    async def read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(parts)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` in one message, then passes on to the client's (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
