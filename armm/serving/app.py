"""The FastAPI application: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (with server-sent events)."""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from armm.chat.templates import ChatTemplate, render
from armm.sampling import build_sampler
from armm.serving.engine import Engine, Event, Job
from armm.serving.logprobs import OpenAILogprobs, ResponseLogprobs
from armm.serving.middleware import LimitBody, RequireKey
from armm.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest, SamplingRequest

log = logging.getLogger("armm.serve")

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks that its client is still there


@dataclass(frozen=True)
class Limits:
    """``max_tokens`` above ``max_tokens_limit``, a prompt above ``max_prompt_tokens`` (default: the context
    less one), a prompt plus ``max_tokens`` above the model's context, or more than ``max_choices`` choices
    in one request are refused with 400; a request body over ``max_body_bytes`` with 413."""

    max_tokens_limit: int = 512
    max_prompt_tokens: int | None = None
    max_choices: int = 8
    completion_default_max_tokens: int = 16  # OpenAI's default for /v1/completions; chat defaults to the limit
    max_body_bytes: int = 4 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_tokens_limit", "max_prompt_tokens", "max_choices", "completion_default_max_tokens",
                     "max_body_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


def create_app(engine: Engine, model_name: str, chat_template: ChatTemplate, *, api_key: str | None = None,
               limits: Limits = Limits()) -> FastAPI:
    """The app for one model. It starts the engine's thread on startup and stops it on shutdown."""
    tokenizer, context = engine.tokenizer, engine.model.config.max_seq_len
    max_prompt = min(limits.max_prompt_tokens or context - 1, context - 1)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="armm", lifespan=lifespan)
    _add_error_handlers(app)
    app.add_middleware(LimitBody, max_bytes=limits.max_body_bytes)
    if api_key is not None:  # added last, so it runs first: no byte of the body is read without the key
        app.add_middleware(RequireKey, api_key=api_key)

    def check_model(body: SamplingRequest) -> None:
        if body.model != model_name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")

    def check_choices(choices: int) -> None:
        """Refuse a request for more choices than the server allows, before any prompt is encoded."""
        if choices > limits.max_choices:
            raise APIError(400, f"{choices} choices requested (prompts × n); this server allows at most "
                                f"{limits.max_choices}", "n")

    def check_length(tokens: int, param: str) -> None:
        if tokens > max_prompt:
            raise APIError(400, f"the prompt has {tokens} tokens; this server accepts at most {max_prompt}", param,
                           "context_length_exceeded")

    def budget(body: SamplingRequest, prompts: list[list[int]], default: int) -> int:
        """max_tokens, checked against the limits and the context of the longest prompt."""
        longest = max(len(p) for p in prompts)
        check_length(longest, "messages" if isinstance(body, ChatCompletionRequest) else "prompt")
        if body.max_tokens is None:
            return min(default, limits.max_tokens_limit, context - longest)
        if body.max_tokens > limits.max_tokens_limit:
            raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most "
                                f"{limits.max_tokens_limit}", "max_tokens")
        if longest + body.max_tokens > context:
            raise APIError(400, f"this model's context is {context} tokens, but the prompt ({longest} tokens) "
                                f"plus max_tokens ({body.max_tokens}) needs {longest + body.max_tokens}; "
                                f"lower max_tokens to at most {context - longest}", "max_tokens",
                           "context_length_exceeded")
        return body.max_tokens

    def make_job(body: SamplingRequest, prompts: list[list[int]], default_max_tokens: int,
                 stop_ids: list[int], stop_strings: list[str], logprobs: int | None, echo: bool = False) -> Job:
        seed = random.randrange(2**62) if body.seed is None else body.seed
        rows = [p for p in prompts for _ in range(body.n)]
        sampler = body.sampler_spec()
        try:
            build_sampler(sampler)  # a bad spec fails this request now, not the batch the worker runs it in
        except ValueError as err:
            raise APIError(400, str(err)) from None
        job = Job(rows, budget(body, prompts, default_max_tokens), sampler, [seed + i for i in range(len(rows))],
                  stop_ids, stop_strings, logprobs, echo)
        engine.submit(job)
        return job

    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    token_names = OpenAILogprobs(tokenizer)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {model_name!r}", "model",
                           "model_not_found")
        return model_card()

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "armm",
                "max_model_len": context}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body)
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens=0 generates nothing; it is allowed only with echo=true, to score the "
                                "prompt", "max_tokens")
        check_choices(len(body.prompts) * body.n)
        prompts = [encode_prompt(p) for p in body.prompts]
        job = make_job(body, prompts, limits.completion_default_max_tokens, eos, body.stop_strings, body.alternatives,
                       bool(body.echo))
        return await respond(job, request, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body)
        check_choices(body.n)
        try:
            rendered = render([m.as_dict() for m in body.messages], chat_template, tokenizer)
        except ValueError as err:
            raise APIError(400, str(err), "messages") from None
        ids = rendered.ids if rendered.ids is not None else tokenizer.encode(rendered.text)
        if not ids:
            raise APIError(400, "the messages render to an empty prompt", "messages")
        stop_ids = sorted(set(rendered.stop_token_ids) | set(eos))
        stop_strings = body.stop_strings + list(chat_template.stop_strings)
        job = make_job(body, [ids], limits.max_tokens_limit, stop_ids, stop_strings, body.alternatives)
        return await respond(job, request, body, [ids], chat=True)

    def encode_prompt(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            if not prompt:
                raise APIError(400, "a prompt of token ids is empty; give at least one id (e.g. the bos token)",
                               "prompt")
            check_length(len(prompt), "prompt")  # before looking at a million ids one by one
            bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0 .. {tokenizer.vocab_size - 1})",
                               "prompt")
            return prompt
        ids = tokenizer.start_ids + tokenizer.encode_prompt(prompt)
        if not ids:
            raise APIError(400, "the prompt is empty and the tokenizer has no bos token to start from", "prompt")
        return ids

    async def respond(job: Job, request: Request, body: SamplingRequest, prompts: list[list[int]], chat: bool):
        usage = Usage(sum(len(p) for p in prompts))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_name}
        logprobs_of = ResponseLogprobs(token_names, chat, len(job.prompts)) if job.logprobs is not None else None
        if body.stream:
            chunks = stream_chunks(job, head, usage, chat, body.include_usage, logprobs_of)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        n = len(job.prompts)
        texts, finish, tokens = [""] * n, [None] * n, [[] for _ in range(n)]
        try:
            async for event in events_while_connected(job, request):
                texts[event.index] += event.text
                tokens[event.index] += event.logprobs
                if event.finish_reason:
                    finish[event.index] = event.finish_reason
                    usage.completion_tokens += event.completion_tokens
        finally:
            job.cancel()
        logprobs = [logprobs_of(i, t) if logprobs_of else None for i, t in enumerate(tokens)]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": lp,
                        "finish_reason": f} for i, (t, f, lp) in enumerate(zip(texts, finish, logprobs))]
        else:
            choices = [{"index": i, "text": t, "logprobs": lp, "finish_reason": f}
                       for i, (t, f, lp) in enumerate(zip(texts, finish, logprobs))]
        kind = "chat.completion" if chat else "text_completion"
        return {**head, "object": kind, "choices": choices, "usage": usage.body()}

    return app


async def events_while_connected(job: Job, request: Request) -> AsyncIterator[Event]:
    """A non-streamed job's events; the job is cancelled if its client goes away while it waits."""
    while True:
        try:
            event = await job.next(timeout=DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return
            continue
        if event is None:
            return
        yield event


async def stream_chunks(job: Job, head: dict[str, Any], usage: Usage, chat: bool, include_usage: bool,
                        logprobs_of: ResponseLogprobs | None = None) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's format; with ``logprobs_of``, each text chunk carries the log-probabilities of
    the tokens that released its text. When the client disconnects, the response stops iterating this generator
    and its ``finally`` cancels the job, which frees the worker at its next step."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        usage_field = {"usage": None} if include_usage else {}
        return f"data: {json.dumps({**head, 'object': kind, 'choices': choices, **usage_field, **extra})}\n\n"

    def choice(index: int, text: str | None, finish_reason: str | None, role: bool = False,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        if not chat:
            return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    try:
        if chat:
            yield chunk([choice(i, None, None, role=True) for i in range(len(job.prompts))])
        try:
            async for event in job.events():
                if event.text or (logprobs_of and event.logprobs):
                    logprobs = logprobs_of(event.index, event.logprobs) if logprobs_of else None
                    yield chunk([choice(event.index, event.text, None, logprobs=logprobs)])
                if event.finish_reason:
                    usage.completion_tokens += event.completion_tokens
                    yield chunk([choice(event.index, None, event.finish_reason)])
        except Exception as err:
            log.exception("generation failed")
            yield f"data: {json.dumps(APIError(500, str(err), type='server_error').body())}\n\n"
            return
        if include_usage:
            yield chunk([], usage=usage.body())
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0

    def body(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, including FastAPI's own validation and routing errors, in the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', message)})", None
        elif param:
            message = f"{param}: {message}"
        return JSONResponse(APIError(400, message, param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)
