"""Built-in text datasets that ship with Python itself (no download): the reference manual's help topics, as
documents and as question-and-answer conversations."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

from armm.tokenizer import Tokenizer

HEADING_RULE = re.compile(r"([*=\-~^])\1+")  # the line under a heading, as long as the heading
SIGNATURE = re.compile(r"(?:class |classmethod |staticmethod )?([A-Za-z_][\w.]*\(.*\))")  # str.center(width[, …])
SKIPPED_BLOCKS = ("See also", "**Source code:**")
VERSION_NOTES = ("New in version", "Changed in version", "Deprecated since version")  # no answer on their own
ANSWER_CHARS = 300  # an answer is whole paragraphs: at least this long when the text allows,
ANSWER_MAX_CHARS = 900  # and at most this long, unless a paragraph is longer or introduces what follows it
LITERAL_MAX_CHARS = 600  # longer grammar or code blocks are left out of answers

TOPIC_QUESTIONS = (
    "Tell me about {}.",
    "Can you explain {} in Python?",
    "What does the Python reference manual say about {}?",
    "Give me an overview of {}.",
    "I'm learning Python. What should I know about {}?",
    "Could you describe {}?",
    "Explain {}, please.",
)
DEFINITION_QUESTIONS = (
    "What does `{}` do?",
    "What is `{}` for?",
    "How does `{}` behave?",
    "Explain `{}`.",
    "Can you tell me what `{}` does in Python?",
)
FOLLOW_UPS = ("Tell me more.", "Go on, please.", "What else should I know about that?")
SYSTEM_MESSAGES = (
    "You are a helpful assistant who answers questions about the Python programming language.",
    "You are an expert on the Python language reference. Answer in the manual's own words.",
    "Answer questions about Python precisely.",
)
SYSTEM_EVERY, FOLLOW_UP_EVERY = 4, 3  # every 4th conversation has a system message; every 3rd topic a second turn
PROPER_WORDS = {"Python", "None", "Ellipsis", "Unicode"}


def pydoc_topics(tokenizer: Tokenizer | None = None) -> list[str]:
    """The Python reference manual's help topics (``pydoc_data.topics``): 79 English documents, about 0.8 MB."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def pydoc_chat(tokenizer: Tokenizer | None = None) -> list[dict[str, list[dict[str, str]]]]:
    """Questions about Python answered from the reference manual (``pydoc_data.topics``), as conversations
    ``{"messages": [...]}`` for chat fine-tuning (``data.format: chat``); about 250, built the same way every time.

    Each section of a help topic becomes a question about its title ("Tell me about the `with` statement.")
    answered by its first paragraphs, every third with a follow-up ("Tell me more.") answered by the next ones;
    each documented method (``str.center(width[, fillchar])``) becomes "What does `…` do?" answered by its
    description. Questions cycle through several phrasings and every fourth conversation opens with a system
    message. A section or method documented in several topics is asked about once.
    """
    from pydoc_data.topics import topics

    sections: dict[str, list[str]] = {}
    definitions: dict[str, list[str]] = {}
    for name in sorted(topics):
        for title, blocks in _sections(topics[name]):
            prose, entries = _split_definitions(blocks)
            if _subject(title) and (chunks := _answers(prose)):
                sections.setdefault(_subject(title), chunks)
            for term, body in entries:
                if chunks := _answers(body):
                    definitions.setdefault(term, chunks)
    turns = []
    for index, (subject, chunks) in enumerate(sections.items()):
        exchange = [(TOPIC_QUESTIONS[index % len(TOPIC_QUESTIONS)].format(subject), chunks[0])]
        if index % FOLLOW_UP_EVERY == 0 and len(chunks) > 1:
            exchange.append((FOLLOW_UPS[index // FOLLOW_UP_EVERY % len(FOLLOW_UPS)], chunks[1]))
        turns.append(exchange)
    for index, (term, chunks) in enumerate(definitions.items()):
        turns.append([(DEFINITION_QUESTIONS[index % len(DEFINITION_QUESTIONS)].format(term), chunks[0])])
    conversations = []
    for index, exchange in enumerate(turns):
        system = SYSTEM_MESSAGES[index // SYSTEM_EVERY % len(SYSTEM_MESSAGES)] if index % SYSTEM_EVERY == 0 else None
        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in exchange:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        conversations.append({"messages": messages})
    return conversations


@dataclass(frozen=True)
class _Block:
    """Lines between blank lines, and the indentation of the first."""

    indent: int
    lines: list[str]

    def dedented(self, columns: int) -> _Block:
        return _Block(self.indent - columns, [line[columns:] for line in self.lines])


def _sections(text: str) -> Iterator[tuple[str, list[_Block]]]:
    """``(title, blocks of its text)`` for each heading of a topic, its text ending at the next heading."""
    lines = text.split("\n")
    headings = [i for i in range(len(lines) - 1)
                if lines[i].strip() and HEADING_RULE.fullmatch(lines[i + 1]) and len(lines[i + 1]) == len(lines[i])]
    for start, end in zip(headings, [*headings[1:], len(lines)]):
        yield lines[start], _blocks(lines[start + 2:end])


def _blocks(lines: list[str]) -> list[_Block]:
    blocks, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(_Block(len(current[0]) - len(current[0].lstrip()), current))
            current = []
    return blocks


def _split_definitions(blocks: list[_Block]) -> tuple[list[_Block], list[tuple[str, list[_Block]]]]:
    """A section's text before its first entry (signature lines with a description indented under them), and the
    entries of one method of a named type (``str.center(width[, fillchar])``) with their descriptions, dedented."""
    prose_end, entries = len(blocks), []
    for index, block in enumerate(blocks):
        matches = [SIGNATURE.fullmatch(line.strip()) for line in block.lines]
        body_indent = block.indent + 3
        if not all(matches) or index + 1 == len(blocks) or blocks[index + 1].indent < body_indent:
            continue
        prose_end = min(prose_end, index)
        body = []
        for following in blocks[index + 1:]:
            if following.indent < body_indent:
                break
            body.append(following.dedented(body_indent))
        term = matches[0].group(1)
        if len(matches) == 1 and "." in term.split("(")[0]:
            entries.append((term, body))
    return blocks[:prose_end], entries


def _answers(blocks: list[_Block]) -> list[str]:
    """Top-level text as answers of whole paragraphs (rewrapped), each with the indented grammar, code, tables and
    list items that its paragraphs introduce; a paragraph that introduces something left out (a long table) is
    left out too."""
    answers, current = [], []  # current: (text, is prose) of the answer being built
    for block in blocks:
        if block.lines[0].startswith(SKIPPED_BLOCKS) or HEADING_RULE.fullmatch(block.lines[0]):
            continue
        table = block.lines[0].startswith(("+-", "|"))
        text = _paragraph(block.lines) if block.indent == 0 and not table else "\n".join(block.lines)
        prose = block.indent == 0 and not table and not block.lines[0].startswith(VERSION_NOTES)
        if not prose and len(text) > LITERAL_MAX_CHARS:
            _drop_introductions(current)
            continue
        length = sum(len(piece) + 2 for piece, _ in current)
        full = length >= ANSWER_CHARS or length + len(text) > ANSWER_MAX_CHARS
        if prose and full and any(p for _, p in current) and not current[-1][0].endswith(":"):
            answers.append(_joined(current))
            current = []
        current.append((text, prose))
    _drop_introductions(current)
    if any(p for _, p in current):
        answers.append(_joined(current))
    return answers


def _joined(pieces: list[tuple[str, bool]]) -> str:
    """An answer's pieces, a blank line apart; one that opens with a grammar or code block starts at column 0 (a reply
    that begins with spaces would merge with the newline before it in a BPE, breaking the chat loss mask)."""
    return "\n\n".join([textwrap.dedent(pieces[0][0]), *(piece for piece, _ in pieces[1:])])


def _drop_introductions(pieces: list[tuple[str, bool]]) -> None:
    """Remove the trailing paragraphs that end in a colon: what they introduce is not there."""
    while pieces and pieces[-1][0].endswith(":"):
        pieces.pop()


def _paragraph(lines: list[str]) -> str:
    """A hard-wrapped paragraph as one line; a word hyphenated at a line end ("built-" / "in") is joined."""
    text = lines[0].strip()
    for line in lines[1:]:
        joiner = "" if re.search(r"[A-Za-z]-$", text) else " "
        text += joiner + line.strip()
    return text


def _subject(title: str) -> str | None:
    """A heading as the subject of a question: 'The "with" statement' → 'the `with` statement', 'Format String
    Syntax' → 'format string syntax'; None for headings that mean nothing on their own ('Overview')."""
    if title in ("Overview",):
        return None
    title = re.sub(r'"([^"]+)"', r"`\1`", re.sub(r"\*(\w+)\*", r"`\1`", title))
    pieces = title.split("`")  # odd pieces are code: left as they are
    for index in range(0, len(pieces), 2):
        pieces[index] = re.sub(r"\b[A-Z][a-z]+\b", lambda m: m[0] if m[0] in PROPER_WORDS else m[0].lower(),
                               pieces[index])
    subject = "`".join(pieces)
    return f"the {subject}" if subject.startswith("`") and subject.endswith(" clause") else subject
