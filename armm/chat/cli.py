"""``armm chat``: talk to a saved model in the terminal through its chat template, the reply streamed as it is drawn."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from armm.chat.templates import ChatTemplate, Rendered, get_template, render, template_for_model
from armm.backends import Backend
from armm.generation import PastContext, generate
from armm.layout import sampler_for
from armm.pretrained import load_pretrained
from armm.sampling import build_sampler
from armm.textstream import stream_text
from armm.tokenizer import Tokenizer

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /exit (or end of input)"


@dataclass
class Conversation:
    """The system message and the turns so far, rendered to a prompt that fits ``budget`` tokens."""

    template: ChatTemplate
    tokenizer: Tokenizer
    budget: int
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def prompt(self) -> tuple[Rendered, int]:
        """Render the conversation, first dropping the oldest exchanges (a user turn and its replies) that do not fit;
        also return how many messages were dropped."""
        rendered, dropped = render(self.messages(), self.template, self.tokenizer), 0
        while len(rendered.ids) > self.budget and len(self.turns) > 1:
            next_user = next(i for i, m in enumerate(self.turns) if i and m["role"] == "user")
            del self.turns[:next_user]
            dropped += next_user
            rendered = render(self.messages(), self.template, self.tokenizer)
        if len(rendered.ids) > self.budget:
            self.turns.clear()
            raise ValueError(
                f"the system message and this message render to {len(rendered.ids)} tokens, more than the "
                f"{self.budget} the context leaves for the prompt; write less or lower --max_new_tokens"
            )
        return rendered, dropped


def chat(
    model_dir: Path,
    template: str | None = None,
    system: str | None = None,
    sampler: str = "temperature=0.7,top_p=0.9",
    max_new_tokens: int = 256,
    seed: int | None = None,
    show_prompt: bool = False,
    backend: Backend = "auto",
    past_context: PastContext = "recompute",
) -> None:
    """Chat with a saved model in the terminal: type a message, read the reply as it is generated.

    Args:
        model_dir: A model directory (config.json, model.safetensors, tokenizer/), or a Hugging Face
            checkpoint folder with its tokenizer (GPT-2, Llama, Mistral, Qwen2).
        template: A chat template: chatml, llama-3, llama-2, gemma, or a tokenizer_config.json / .jinja file;
            by default the model directory's own template, else chatml.
        system: A system message to start with (change it with /system TEXT).
        sampler: A sampler spec such as "greedy" or "temperature=0.7,top_p=0.9".
        max_new_tokens: The longest reply, in tokens; it may be longer than the model's context (see
            --past_context). The prompt gets the context the reply leaves, and at least half of it: older turns are
            dropped to fit.
        seed: Random seed; reply i uses seed + i, so a session is reproducible.
        show_prompt: Show what happens behind each reply: the rendered template, its token ids, then the generation.
        backend: How the forwards run (auto, eager, native, compiled; see `armm sample --help`).
        past_context: How a reply goes on past the model's context: recompute, rolling or chunked (see
            `armm sample --help`).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    build_sampler(sampler)  # a bad spec fails now, not at the first reply
    chat_template = get_template(template) if template else template_for_model(model_dir)
    model, tok = load_pretrained(model_dir)
    sampler = sampler_for(tok, sampler)  # a mixed-modality model keeps to its layout's spans
    context = model.config.max_seq_len
    budget = context - min(max_new_tokens, context // 2)  # a longer reply slides its window past the context
    conversation = Conversation(chat_template, tok, budget, system)
    print(f"chatting with {model_dir} (template {conversation.template.name}); {HELP}")
    replies = 0
    for line in _user_lines():
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            conversation.turns.clear()
            print("(conversation cleared)")
        elif line.split()[0] == "/system":
            conversation.system = line[len("/system"):].strip() or None
            print(f"(system message: {conversation.system!r})")
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]!r}; {HELP}")
        else:
            conversation.turns.append({"role": "user", "content": line})
            try:
                rendered, dropped = conversation.prompt()
            except ValueError as err:
                print(f"error: {err}")
                continue
            if dropped:
                print(f"(dropped the {dropped} oldest messages so that the prompt fits in {budget} tokens)")
            if show_prompt:
                _show_prompt(conversation.template, rendered)
            stops = list(dict.fromkeys(rendered.stop_token_ids + ([tok.eos_id] if tok.eos_id is not None else [])))
            steps = generate(model, [rendered.ids], max_new_tokens=max_new_tokens, sampler=sampler,
                             stop_tokens=stops, seed=None if seed is None else seed + replies, stream=True,
                             backend=backend, past_context=past_context)
            pieces = stream_text(tok, (step[0] for step in steps), conversation.template.stop_strings)
            conversation.turns.append({"role": "assistant", "content": _print_reply(pieces)})
            replies += 1


def _user_lines() -> Iterator[str]:
    """Non-empty lines typed after a ``you> `` prompt (stripped), until end of input."""
    while True:
        print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            print()
            return
        if not sys.stdin.isatty():  # piped input: echo it, so the transcript reads like a session
            print(line.rstrip("\n"))
        if line.strip():
            yield line.strip()


def _show_prompt(template: ChatTemplate, rendered: Rendered) -> None:
    print(f"--- prompt (template {template.name}) ---")
    print(rendered.text)
    print(f"--- {len(rendered.ids)} token ids ---")
    print(rendered.ids)
    print("--- generation ---")


def _print_reply(pieces: Iterator[str]) -> str:
    """Print the reply as its pieces arrive; return it whole."""
    print("assistant> ", end="", flush=True)
    reply = ""
    for piece in pieces:
        print(piece, end="", flush=True)
        reply += piece
    print()
    return reply
