"""Chat templates: a conversation (``[{"role", "content"}, …]``) → the exact prompt string a chat model was trained
on → token ids, and the stop strings that end the model's reply.

Templates are Jinja sources rendered the way Hugging Face ``transformers`` renders them (``trim_blocks``,
``lstrip_blocks``, loop controls, ``raise_exception``, a ``tojson`` that keeps non-ASCII) inside Jinja's immutable
sandbox, so a template read from a downloaded ``tokenizer_config.json`` cannot reach Python internals.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from armm.files import read_json_object
from armm.layout import Part, VocabLayout
from armm.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
# Private-use characters around the index of a message part that the template sees as a placeholder: a non-text part
# (where its span goes) or a special token's string typed in a message (encoded as text).
PART_MARK, PART_END = "\ue000", "\ue001"
# End-of-turn tokens of well-known chat formats: a template from a file stops at those its vocabulary or source has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
# The special-token variables ``transformers`` hands every template, read from tokenizer_config.json.
TOKEN_VARIABLES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template, the strings that end a reply, and the variables (``bos_token``…) it is rendered with."""

    name: str
    source: str
    stop_strings: tuple[str, ...]
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: the exact prompt text, its ids (when a tokenizer was given) and the stop ids.

    A non-text part of a message (an image for a mixed-modality model) shows in ``text`` as ``<|name|>``; in ``ids``
    it is encoded by its own plugin between its span tokens.
    """

    text: str
    ids: list[int] | None
    stop_token_ids: list[int]


@dataclass(frozen=True)
class Verbatim:
    """A special token's string inside a message: encoded as text, never as the special token's id, so that a message
    cannot forge a turn by typing ``<|im_start|>``."""

    text: str


Placeheld = Part | Verbatim  # what a placeholder in the rendered text stands for


# --- built-in templates: the official Jinja sources, text-only ----------------------------------------------------
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA_3 = (  # Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LLAMA_2 = (  # Llama-2-7b-chat-hf; "[/INST]" already asks for the reply, so there is no generation prompt
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

GEMMA = (  # Gemma 3 (text only): the system message opens the first user turn
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

BUILT_IN: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", CHATML, ("<|im_end|>",)),
    "llama-3": ChatTemplate("llama-3", LLAMA_3, ("<|eot_id|>",), {"bos_token": "<|begin_of_text|>"}),
    "llama-2": ChatTemplate("llama-2", LLAMA_2, ("</s>",), {"bos_token": "<s>", "eos_token": "</s>"}),
    "gemma": ChatTemplate("gemma", GEMMA, ("<end_of_turn>",), {"bos_token": "<bos>", "eos_token": "<eos>"}),
}


# --- finding a template -------------------------------------------------------------------------------------------
def get_template(name_or_path: str | Path) -> ChatTemplate:
    """A built-in template by name (``chatml``, ``llama-3``, ``llama-2``, ``gemma``), or one read from a Hugging Face
    ``tokenizer_config.json`` or a ``.jinja`` file."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix not in (".json", ".jinja"):
        raise ValueError(
            f"unknown chat template {str(name_or_path)!r}: use a built-in one ({', '.join(BUILT_IN)}) or the path "
            f"of a tokenizer_config.json or .jinja file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"chat template file {path} does not exist")
    if path.suffix == ".jinja":
        return _file_template(path, path.read_text(encoding="utf-8"), path.parent / "tokenizer_config.json")
    return _file_template(path, _template_in_config(path), path)


def template_for_model(model_dir: str | Path) -> ChatTemplate:
    """The model's own template, else ChatML. ``model_dir`` is an armm model directory (``chat_template.jinja``, or
    ``tokenizer/tokenizer_config.json`` with a ``chat_template``) or a Hugging Face checkpoint folder (the same files
    at its root)."""
    model_dir = Path(model_dir)
    configs = [folder / "tokenizer_config.json" for folder in (model_dir / "tokenizer", model_dir)]
    config = next((path for path in configs if path.is_file()), configs[0])
    for jinja in (model_dir / "chat_template.jinja", model_dir / "tokenizer" / "chat_template.jinja"):
        if jinja.is_file():
            return _file_template(jinja, jinja.read_text(encoding="utf-8"), config)
    if config.is_file() and "chat_template" in read_json_object(config, "a Hugging Face tokenizer_config.json"):
        return get_template(config)
    return BUILT_IN["chatml"]


def _template_in_config(path: Path) -> str:
    """The ``chat_template`` of a tokenizer_config.json: a string, or the ``default`` of a list of named templates;
    ``transformers`` >= 4.43 saves it beside the config as ``chat_template.jinja``."""
    config = read_json_object(path, "a Hugging Face tokenizer_config.json")
    template = config.get("chat_template")
    if template is None:
        beside = path.parent / "chat_template.jinja"
        if beside.is_file():
            return beside.read_text(encoding="utf-8")
        raise ValueError(f"{path} has no chat_template (and there is no chat_template.jinja beside it)")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if not isinstance(named.get("default"), str):
            raise ValueError(f"{path} lists chat templates {sorted(map(str, named))} but none named 'default'")
        return named["default"]
    if not isinstance(template, str):
        raise ValueError(f"{path}: chat_template must be a string or a list of {{name, template}}")
    return template


def _file_template(path: Path, source: str, config_path: Path) -> ChatTemplate:
    """A template from a file: special-token variables from the tokenizer config (if there is one), and as stop
    strings the eos token plus the known end-of-turn tokens that the vocabulary or the template holds."""
    config = read_json_object(config_path, "a Hugging Face tokenizer_config.json") if config_path.is_file() else {}
    variables = {name: token for name in TOKEN_VARIABLES if (token := _token_text(config.get(name))) is not None}
    vocabulary = _added_tokens(config, config_path.parent / "tokenizer.json")
    end_of_turn = [t for t in END_OF_TURN_TOKENS if t in vocabulary or t in source]
    eos = [variables["eos_token"]] if "eos_token" in variables else []
    stops = tuple(dict.fromkeys(eos + end_of_turn))
    try:
        _compile(source)  # a syntax error surfaces now, naming the file
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return ChatTemplate(str(path), source, stops, variables)


def _token_text(token: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken object with ``content``."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _added_tokens(config: dict[str, Any], tokenizer_json: Path) -> set[str]:
    """The added (special) tokens of the tokenizer config and of the tokenizer.json beside it."""
    entries = list(config.get("added_tokens_decoder", {}).values())
    if tokenizer_json.is_file():
        entries += read_json_object(tokenizer_json, "a Hugging Face tokenizer.json").get("added_tokens", [])
    return {text for entry in entries if (text := _token_text(entry)) is not None}


# --- rendering ----------------------------------------------------------------------------------------------------
def render(
    messages: list[dict],
    template: ChatTemplate,
    tokenizer: Tokenizer | None = None,
    add_generation_prompt: bool = True,
) -> Rendered:
    """Render a conversation with ``template``; with a ``tokenizer``, also its ids and the ids of the stop strings
    that are special tokens of that tokenizer.

    The special-token strings the template writes become their single ids. A special token's string inside a
    message's text stays text (a ``Verbatim`` part, encoded on its own as ``transformers``'
    ``apply_chat_template(..., sanitize_control_tokens=True)`` does), so a message cannot open a turn; a
    conversation without such strings gets the ids of ``apply_chat_template(..., tokenize=True)``.

    A message's content is a string or a list of parts: ``{"type": "text", "text": …}`` and, for a model whose
    tokenizer is a mixed ``VocabLayout``, ``{"type": NAME, NAME: sample}`` for any other part of its layout
    (e.g. ``{"type": "image", "image": uint8 tensor}``). The template sees a placeholder where each such part goes.
    """
    layout = tokenizer if isinstance(tokenizer, VocabLayout) else None
    text_tokenizer = layout.span(layout.prompt_part).tokenizer if layout else tokenizer
    messages, parts = validate_messages(messages, special_texts(text_tokenizer) if text_tokenizer is not None else ())
    try:
        text = _compile(template.source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None,
            **template.variables,
        )
    except jinja2.exceptions.SecurityError as err:
        raise ValueError(f"chat template {template.name!r} was refused by the sandbox: {err}") from None
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template {template.name!r} failed to render: {err}") from None
    segments = _segments(text, parts, template)
    shown = "".join(_shown(segment) for segment in segments)
    if tokenizer is None:
        return Rendered(shown, None, [])
    if layout is not None:
        return _render_layout(segments, layout, template, shown)
    non_text = sorted({part.name for part in parts if isinstance(part, Part)})
    if non_text:
        raise ValueError(f"message parts of type {', '.join(non_text)} need a mixed-modality model; tokenizer "
                         f"{tokenizer.name!r} reads text only")
    return Rendered(shown, _encode_text(tokenizer, segments), stop_token_ids(tokenizer, template.stop_strings))


def _segments(text: str, parts: list[Placeheld], template: ChatTemplate) -> list[str | Placeheld]:
    """The rendered text cut at its placeholders: text, a part, text, a part, …, text (a template may drop or repeat
    messages, but must keep each placeholder whole)."""
    pieces = text.split(PART_MARK)
    segments: list[str | Placeheld] = [pieces[0]]
    for piece in pieces[1:]:
        index, end, rest = piece.partition(PART_END)
        if not (end and index.isascii() and index.isdigit() and int(index) < len(parts)):
            raise ValueError(
                f"chat template {template.name!r} cut apart the placeholder (U+E000 index U+E001) of a message part; "
                f"use a template that writes each message's content whole"
            )
        segments += [parts[int(index)], rest]
    return segments


def _shown(segment: str | Placeheld) -> str:
    if isinstance(segment, Part):
        return f"<|{segment.name}|>"
    return segment.text if isinstance(segment, Verbatim) else segment


def _encode_text(tokenizer: Tokenizer, segments: Iterable[str | Verbatim]) -> list[int]:
    """Ids of rendered text: the template's text with its special-token strings as their ids, each ``Verbatim`` part
    as text on its own."""
    ids: list[int] = []
    for segment in segments:
        if isinstance(segment, Verbatim):
            ids += tokenizer.encode(segment.text)
        elif segment:
            ids += encode_special(tokenizer, segment)
    return ids


def _render_layout(segments: list[str | Placeheld], layout: VocabLayout, template: ChatTemplate,
                   shown: str) -> Rendered:
    """Ids in a mixed layout: each run of text in a span of the layout's text part (the last one left open for the
    reply), every other part in its own span. A reply ends at the text span's end token or at an end-of-turn token."""
    text_span = layout.span(layout.prompt_part)
    ids, in_text = list(layout.start_ids), False
    for segment in segments:
        if isinstance(segment, Part):
            if in_text:
                ids.append(text_span.end_id)
            ids += layout.encode_part(*segment)
            in_text = False
        elif segment:
            if not in_text:
                ids.append(text_span.begin_id)
            ids += [text_span.offset + i for i in _encode_text(text_span.tokenizer, [segment])]
            in_text = True
    local_stops = stop_token_ids(text_span.tokenizer, template.stop_strings)
    return Rendered(shown, ids, [text_span.end_id, *(text_span.offset + i for i in local_stops)])


def validate_messages(messages: Any, specials: Iterable[str] = ()) -> tuple[list[dict[str, str]], list[Placeheld]]:
    """Check a conversation is a non-empty list of ``{"role": system|user|assistant, "content": str or parts}``.

    Returns copies holding only role and content, with a placeholder for each non-text part and for each string of
    ``specials`` (special tokens' texts) in the text, and those parts (``Part`` and ``Verbatim``) in order.
    """
    special = _special_pattern(frozenset(specials))
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    checked, parts = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index} must be a dict with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {index} has role {message['role']!r}; allowed roles: {', '.join(ROLES)}")
        content = message["content"]
        if isinstance(content, list):
            content = "".join(_content_part(item, index, parts, special) for item in content)
        elif isinstance(content, str):
            content = _escape(_check_text(content, index), special, parts)
        else:
            raise ValueError(f"message {index} content must be a string or a list of parts, "
                             f"got {type(content).__name__}")
        checked.append({"role": message["role"], "content": content})
    return checked, parts


def _check_text(text: str, index: int) -> str:
    if PART_MARK in text or PART_END in text:
        raise ValueError(f"message {index} contains the reserved character U+E000 or U+E001")
    return text


def _content_part(item: Any, index: int, parts: list[Placeheld], special: re.Pattern[str] | None) -> str:
    """One item of a content list → its text (special tokens' strings escaped), or a placeholder for a non-text
    part (appended to ``parts``)."""
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "text" and isinstance(item.get("text"), str):
        return _escape(_check_text(item["text"], index), special, parts)
    if isinstance(kind, str) and kind != "text" and kind in item:
        return _placeholder(Part(kind, item[kind]), parts)
    raise ValueError(f'message {index} has a content part {item!r:.80}; write {{"type": "text", "text": …}} or '
                     f'{{"type": NAME, NAME: sample}} for a part of a mixed-modality model')


def _escape(text: str, special: re.Pattern[str] | None, parts: list[Placeheld]) -> str:
    """``text`` with each special token's string in it replaced by the placeholder of a ``Verbatim`` part."""
    return text if special is None else special.sub(lambda match: _placeholder(Verbatim(match[0]), parts), text)


def _placeholder(part: Placeheld, parts: list[Placeheld]) -> str:
    parts.append(part)
    return f"{PART_MARK}{len(parts) - 1}{PART_END}"


@lru_cache(maxsize=8)
def _special_pattern(specials: frozenset[str]) -> re.Pattern[str] | None:
    """A regex matching any of the strings, longest first (None for none)."""
    longest_first = sorted(specials, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first))) if specials else None


def special_texts(tokenizer: Tokenizer) -> dict[str, int]:
    """The tokenizer's special tokens by their text (``text-bpe``: every special token of its vocabulary); none for a
    tokenizer that has no strings for them (``bytes``), whose rendered text is encoded as it is."""
    return dict(getattr(tokenizer, "special_texts", None) or {})


def encode_special(tokenizer: Tokenizer, text: str) -> list[int]:
    """Encode rendered text so that special-token strings become their ids, where the tokenizer can do that."""
    if "allow_special" in inspect.signature(tokenizer.encode).parameters:
        return tokenizer.encode(text, allow_special=True)
    return tokenizer.encode(text)


def stop_token_ids(tokenizer: Tokenizer, stop_strings: Iterable[str]) -> list[int]:
    """Ids of the stop strings that are special tokens of the tokenizer."""
    specials = special_texts(tokenizer)
    return list(dict.fromkeys(specials[stop] for stop in stop_strings if stop in specials))


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"chat template has a Jinja syntax error at line {err.lineno}: {err.message}") from None


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment of ``transformers.apply_chat_template``, so templates render the same."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
