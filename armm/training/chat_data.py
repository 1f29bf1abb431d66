"""Chat fine-tuning data: conversations rendered with a chat template into one token stream, with a flag per token
saying whether the loss scores it — the assistant replies and their end-of-turn only.

A conversation is ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, …]}``: one JSON object
per line of a ``.jsonl`` file, or one sample of a built-in dataset. An assistant turn is found by rendering
incrementally: the ids of the conversation before it, with the generation prompt (exactly what ``armm chat`` sends),
are a prefix of the ids up to and including it, and the extra ids are the reply. They are scored up to and
including the template's first stop string (``<|im_end|>`` for ChatML), so the model learns to stop; what the
template adds after it (a newline) is not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armm.chat.templates import BUILT_IN, ChatTemplate, Rendered, get_template, render, template_for_model
from armm.files import find_files, read_text
from armm.tokenizer import Tokenizer

Messages = list[dict[str, str]]
FORMAT_HINT = '{"messages": [{"role": "user", "content": …}, {"role": "assistant", "content": …}]}'


@dataclass(frozen=True)
class PackedChat:
    """Conversations as one token stream: ``tokens``, ``scored`` (a flag per token: the loss predicts it) and the
    modality units (bytes) of the scored text, for bits per unit."""

    tokens: np.ndarray
    scored: np.ndarray
    units: int


# --- reading ------------------------------------------------------------------------------------------------------
def read_conversations(source: str | Path) -> list[Messages]:
    """Conversations from a ``.jsonl`` file, a folder or a glob of them: one ``{"messages": […]}`` per line (blank
    lines are skipped). A line that is not such an object is an error naming the file and the line."""
    conversations = []
    for path in find_files(source, (".jsonl",), what="chat files (JSON lines)"):
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON ({err.msg} at column {err.colno}); every line of a chat "
                                 f"file is one conversation: {FORMAT_HINT}") from None
            conversations.append(conversation(record, where))
    return conversations


def conversations_of(samples: Sequence[Any], source: str) -> list[Messages]:
    """The samples of a built-in chat dataset, each checked like a line of a chat file."""
    return [conversation(sample, f"{source} sample {index}") for index, sample in enumerate(samples)]


def conversation(record: Any, where: str) -> Messages:
    """The messages of one ``{"messages": […]}`` record, checked: roles system/user/assistant, text content, at
    least one assistant reply, and a user or system message before the first one. ``where`` names the record."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise ValueError(f"{where} is not a conversation; write {FORMAT_HINT}")
    messages = []
    for index, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: message {index} must be {{\"role\": system|user|assistant, \"content\": "
                             f"text}}, got {message!r:.120}")
        messages.append({"role": message["role"], "content": message["content"]})
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise ValueError(f"{where} has no assistant message, so nothing in it would be learned; add the reply or "
                         f"remove the conversation")
    if roles[0] == "assistant":
        raise ValueError(f"{where} starts with an assistant message; a conversation opens with a system or user "
                         f"message")
    return messages


# --- templates ----------------------------------------------------------------------------------------------------
def chat_template_for(name: str | None, pretrained: str | Path | None = None) -> ChatTemplate:
    """``data.chat_template`` (a built-in name or a template file) when given, else the pretrained model folder's
    own template, else ChatML."""
    if name is not None:
        return get_template(name)
    return template_for_model(pretrained) if pretrained is not None else BUILT_IN["chatml"]


def rendered_texts(conversations: Sequence[Messages], template: ChatTemplate) -> list[str]:
    """Each conversation's rendered text: what a trainable tokenizer is fitted on."""
    return [render(messages, template, add_generation_prompt=False).text for messages in conversations]


# --- tokenising with the loss mask --------------------------------------------------------------------------------
def pack_conversations(conversations: Sequence[Messages], template: ChatTemplate, tokenizer: Tokenizer) -> PackedChat:
    """Render and tokenise every conversation and concatenate them into one stream (no bos or eos is added: each
    conversation is the ids ``armm chat`` would see), flagging the assistant tokens the loss scores."""
    if not tokenizer.decodes_text:
        raise ValueError(f"data.format: chat needs a text tokenizer; {tokenizer.name!r} does not decode to text")
    tokens: list[int] = []
    scored: list[bool] = []
    units = 0
    for messages in conversations:
        ids, flags, scored_text = encode_conversation(messages, template, tokenizer)
        tokens += ids
        scored += flags
        units += sum(tokenizer.num_units(text) for text in scored_text)
    return PackedChat(np.array(tokens, dtype=np.int64), np.array(scored, dtype=bool), units)


def encode_conversation(
    messages: Messages, template: ChatTemplate, tokenizer: Tokenizer
) -> tuple[list[int], list[bool], list[str]]:
    """``(ids, scored, scored_texts)``: the rendered conversation's ids, a flag per id that is on for the assistant
    replies and their end-of-turn, and the text of each scored turn."""
    replies = [message["content"] for message in messages if message["role"] == "assistant"]
    for stop in template.stop_strings:
        for reply in replies:
            if stop in reply:
                raise ValueError(f"an assistant message contains {stop!r}, a stop string of chat template "
                                 f"{template.name!r}, which would end the reply there at generation; remove it from "
                                 f"the data (message: {reply!r:.80})")
    full = render(messages, template, tokenizer, add_generation_prompt=False)
    scored = [False] * len(full.ids)
    scored_text = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], template, tokenizer, add_generation_prompt=True)
        after = render(messages[:index + 1], template, tokenizer, add_generation_prompt=False)
        _check_prefix(before, after, template, message, "the messages before it, with the generation prompt,",
                      "the messages up to it")
        _check_prefix(after, full, template, message, "the messages up to it", "the whole conversation")
        turn_ids, turn_text = after.ids[len(before.ids):], after.text[len(before.text):]
        count, text = _scored_part(turn_ids, turn_text, after.stop_token_ids, template.stop_strings, tokenizer)
        scored[len(before.ids):len(before.ids) + count] = [True] * count
        scored_text.append(text)
    return full.ids, scored, scored_text


def _check_prefix(part: Rendered, whole: Rendered, template: ChatTemplate, reply: dict[str, str], part_name: str,
                  whole_name: str) -> None:
    """The ids (and text) of ``part`` must begin ``whole``, or the assistant turn cannot be told apart."""
    if whole.ids[:len(part.ids)] != part.ids or not whole.text.startswith(part.text):
        raise ValueError(
            f"chat template {template.name!r} renders {part_name} to ids that do not begin those of {whole_name}, "
            f"so the reply cannot be found for the loss mask (reply: {reply['content']!r:.60}). The template changes "
            f"earlier turns, or the tokenizer merges tokens across the turn boundary (e.g. a reply that starts with "
            f"spaces or a newline); strip such replies, or use another template (data.chat_template)"
        )


def _scored_part(ids: list[int], text: str, stop_ids: Sequence[int], stop_strings: Sequence[str],
                 tokenizer: Tokenizer) -> tuple[int, str]:
    """How many of an assistant turn's ``ids`` to score and the text they cover: through the first stop token or
    stop string (the reply's end-of-turn), or the whole turn when the template ends it with neither."""
    found = sorted((position + len(stop), stop) for stop in stop_strings if (position := text.find(stop)) >= 0)
    scored_text = text[:found[0][0]] if found else text
    special = [position for position, token in enumerate(ids) if token in stop_ids]
    if special:
        return special[0] + 1, scored_text
    if not found or found[0][1] not in tokenizer.decode(ids):
        return len(ids), scored_text
    stop = found[0][1]
    low, high = 1, len(ids)  # the fewest ids whose text holds the stop string (a stop string encoded as plain text)
    while low < high:
        middle = (low + high) // 2
        if stop in tokenizer.decode(ids[:middle]):
            high = middle
        else:
            low = middle + 1
    return low, scored_text
