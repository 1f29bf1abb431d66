"""The OpenAI request schemas armm serves, the OpenAI error shape, and OpenAI sampling → an armm sampler spec."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

UNSUPPORTED = ("best_of", "logit_bias", "suffix", "tools", "functions", "tool_choice", "response_format")

# Counts checked when the request is parsed, before anything is encoded (the body limit bounds the parsing itself).
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 128  # each is matched against the text's end at every token
MAX_PROMPTS = 1024  # prompts in one completions request; the server's --max_choices bounds prompts × n further
MAX_MESSAGES = 2048  # messages in one chat request

# Lists inside unions stop at their first bad item: a million token ids tried as a list of strings is one error,
# not a million.
Ids = Annotated[list[int], Field(fail_fast=True)]
Texts = Annotated[list[str], Field(fail_fast=True)]
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(texts: Iterable[str]) -> None:
    """Refuse text that cannot be encoded as UTF-8: JSON's ``\\ud800`` escapes give Python strings with lone
    surrogates, which no tokenizer can encode."""
    for text in texts:
        if bad := _SURROGATE.search(text):
            raise PydanticCustomError("invalid_unicode", "the text has a lone surrogate ({char}) at character {at}, "
                                      "which is not Unicode; send valid UTF-8 text",
                                      {"char": f"U+{ord(bad.group()):04X}", "at": bad.start()})


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions. ``top_k``, ``min_p`` and ``repetition_penalty`` are
    extensions (as in vLLM); fields armm does not know are ignored, fields it cannot honour are refused, and so are
    NaN and infinite numbers (JSON ``NaN``, ``Infinity``)."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # seed + i per choice stays within torch's seeds
    stop: str | Texts | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in UNSUPPORTED:
                if data.get(name) not in (None, False):
                    raise ValueError(f"{name!r} is not supported by armm serve")
        return data

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP:
            raise PydanticCustomError("too_many_stops", "at most {limit} stop strings, got {count}",
                                      {"limit": MAX_STOP, "count": len(stops)})
        if not all(stops):
            raise PydanticCustomError("empty_stop", "stop strings must be non-empty")
        if longest := max((len(s) for s in stops if len(s) > MAX_STOP_CHARS), default=0):
            raise PydanticCustomError("stop_too_long", "a stop string has {length} characters; at most {limit}",
                                      {"length": longest, "limit": MAX_STOP_CHARS})
        check_text(stops)
        return stop

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampler_spec(self) -> str:
        """The armm sampler for these OpenAI parameters: penalties first, then temperature (0: greedy),
        top_k, top_p, min_p. OpenAI's defaults (temperature 1, top_p 1, no penalties) sample the full softmax."""
        items = [f"{name}={value}" for name, value, off in (
            ("repetition_penalty", self.repetition_penalty, 1),
            ("presence_penalty", self.presence_penalty, 0),
            ("frequency_penalty", self.frequency_penalty, 0),
        ) if value is not None and value != off]
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature == 0:
            return ",".join(items + ["greedy"])
        if temperature != 1:
            items.append(f"temperature={temperature}")
        if self.top_k is not None:
            items.append(f"top_k={self.top_k}")
        if self.top_p is not None and self.top_p < 1:
            items.append(f"top_p={self.top_p}")
        if self.min_p is not None:
            items.append(f"min_p={self.min_p}")
        return ",".join(items) or "temperature=1"


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: a prompt as text, a list of texts, token ids, or a list of token-id lists.

    ``logprobs`` (0 to 5) lists each token's log-probability and those of its most likely alternatives; ``echo``
    puts the prompt before the completion, scored too with ``logprobs``, and allows ``max_tokens=0`` (score the
    prompt, generate nothing), as evaluation harnesses ask."""

    prompt: str | Texts | Ids | Annotated[list[Ids], Field(fail_fast=True)]
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _bounded_prompts(cls, prompt: Any) -> Any:
        """At most ``MAX_PROMPTS`` prompts, counted before any is validated."""
        if isinstance(prompt, list) and len(prompt) > MAX_PROMPTS and not isinstance(prompt[0], int):
            raise PydanticCustomError("too_many_prompts", "at most {limit} prompts in one request, got {count}",
                                      {"limit": MAX_PROMPTS, "count": len(prompt)})
        return prompt

    @field_validator("prompt")
    @classmethod
    def _unicode_prompts(cls, prompt: str | list[str] | list[int] | list[list[int]]) -> Any:
        check_text([prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)])
        return prompt

    @property
    def alternatives(self) -> int | None:
        """How many most likely alternatives to list at each token; None: no log-probabilities."""
        return self.logprobs

    @property
    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise APIError(400, "prompt must not be an empty list", "prompt")
        return [self.prompt] if isinstance(self.prompt[0], int) else list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A text message; ``developer`` (OpenAI's newer name for ``system``) is rendered as ``system``."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(fail_fast=True)] | None = None

    @field_validator("content")
    @classmethod
    def _unicode_content(cls, content: str | list[TextPart] | None) -> str | list[TextPart] | None:
        check_text([content] if isinstance(content, str) else [part.text for part in content or []])
        return content

    def as_dict(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``; ``max_completion_tokens`` is the newer name of ``max_tokens``. ``logprobs``
    lists each generated token's log-probability, and ``top_logprobs`` (0 to 20) those of its likeliest alternatives."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def alternatives(self) -> int | None:
        """How many most likely alternatives to list at each token (``top_logprobs``); None: no log-probabilities."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _one_token_budget(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self
