"""``armm serve``: a saved model behind an OpenAI-compatible HTTP API (see docs/serving.md).
The web stack (FastAPI, uvicorn) is imported only when the server starts."""

from __future__ import annotations

import gc
import ipaddress
import os
import sys
from pathlib import Path

import torch

from armm.backends import Backend
from armm.pretrained import load_pretrained


def serve(
    model_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    template: str | None = None,
    api_key: str | None = None,
    max_tokens_limit: int = 512,
    max_prompt_tokens: int | None = None,
    max_choices: int = 8,
    max_batch_size: int = 16,
    max_body_bytes: int = 4 * 2**20,
    model_name: str | None = None,
    device: str | None = None,
    backend: Backend = "auto",
) -> None:
    """Serve a model directory over an OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions.

    Args:
        model_dir: A model directory (config.json, model.safetensors, tokenizer/), or a Hugging Face checkpoint
            folder with its tokenizer (GPT-2, Llama, Mistral, Qwen2).
        host: Interface to bind; the default answers only this machine. Binding another one without an
            API key prints a warning.
        port: TCP port.
        template: Chat template: a built-in name (chatml, llama-3, llama-2, gemma) or a path to a .jinja file
            or tokenizer_config.json; by default the model directory's own template, else chatml.
        api_key: Require "Authorization: Bearer <key>" on every request (default: the ARMM_API_KEY variable).
        max_tokens_limit: The largest max_tokens a request may ask for (also the default for chat).
        max_prompt_tokens: The longest prompt accepted, in tokens (default: the model's context less one).
        max_choices: The most choices (n, times the number of prompts) one request may ask for.
        max_batch_size: The most rows (choices of queued requests with the same sampling) generated together.
        max_body_bytes: The largest request body accepted, in bytes (default 4 MiB); a larger one is answered 413
            as soon as it passes the limit, before any of it is parsed.
        model_name: The name clients put in "model" (default: the model directory's name).
        device: Where the model runs (default: cuda when available, else cpu).
        backend: How the forwards run (auto, eager, native, compiled; see `armm sample --help`); on a GPU,
            compiled replays each decode step as a CUDA graph (the first batch of each size compiles it).
    """
    import uvicorn

    from armm.chat.templates import get_template, template_for_model
    from armm.serving.app import Limits, create_app
    from armm.serving.engine import Engine

    api_key = api_key or os.environ.get("ARMM_API_KEY") or None
    if api_key is None and not is_loopback(host):
        print(f"warning: serving on {host} without an API key: anyone who can reach this port can use the model; "
              "pass --api-key or set ARMM_API_KEY", file=sys.stderr)
    model_dir = Path(model_dir)
    model, tokenizer = load_pretrained(model_dir, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chat_template = get_template(template) if template else template_for_model(model_dir)
    limits = Limits(max_tokens_limit=max_tokens_limit, max_prompt_tokens=max_prompt_tokens, max_choices=max_choices,
                    max_body_bytes=max_body_bytes)
    app = create_app(Engine(model, tokenizer, max_batch_size, backend), model_name or model_dir.resolve().name,
                     chat_template, api_key=api_key, limits=limits)
    gc.freeze()  # the model and the libraries live as long as the process: collections need not scan them again
    uvicorn.run(app, host=host, port=port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
