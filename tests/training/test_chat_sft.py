"""Chat fine-tuning data: the loss scores exactly the assistant replies and their end-of-turn, checked against an
independent computation; clear errors for bad chat files and templates; the built-in pydoc-chat conversations; a
short run on chat data learns."""

from __future__ import annotations

import json
import re

import lightning as L
import numpy as np
import pytest
import torch

from armm.chat.templates import BUILT_IN, encode_special, render
from armm.tokenizer import ByteTokenizer
from armm.training.chat_data import encode_conversation, pack_conversations, read_conversations, rendered_texts
from armm.training.data import IGNORE_INDEX, TokenDataModule
from armm.training.module import ARModule
from armm_text import BPETokenizer
from armm_text.datasets import pydoc_chat

CHATML = BUILT_IN["chatml"]
END = "<|im_end|>"
CONVERSATIONS = [
    [{"role": "user", "content": "What does `pass` do?"},
     {"role": "assistant", "content": "Nothing: it is a placeholder where a statement is required."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Is `None` false?"},
     {"role": "assistant", "content": "Yes, its truth value is false."},
     {"role": "user", "content": "And an empty list?"},
     {"role": "assistant", "content": "Also false — “empty” containers are false."}],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"},
     {"role": "user", "content": "Again, in French."}],  # a trailing user turn is context only
]  # fmt: skip


def replies(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each maximal run of True."""
    edges = np.diff(np.concatenate([[0], np.asarray(flags, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def bpe(special_chat_tokens: bool) -> BPETokenizer:
    """A small BPE fitted on the conversations; with ``special_chat_tokens`` ChatML's markers are single tokens."""
    extra = {"im_start": "<|im_start|>", "im_end": END} if special_chat_tokens else None
    tokenizer = BPETokenizer(vocab_size=400, extra_special_tokens=extra)
    tokenizer.fit(rendered_texts(CONVERSATIONS, CHATML) * 3)
    return tokenizer


# --- the loss mask ------------------------------------------------------------------------------------------------
def test_bytes_mask_equals_the_byte_spans_of_each_reply_and_its_end_of_turn():
    """With one token per byte the reference mask is the byte positions of ``reply<|im_end|>`` in the rendered text,
    found by searching the text — no incremental rendering involved."""
    tokenizer = ByteTokenizer()
    for messages in CONVERSATIONS:
        ids, scored, texts = encode_conversation(messages, CHATML, tokenizer)
        data = render(messages, CHATML, add_generation_prompt=False).text.encode()
        assert ids == list(data)
        reference, cursor = np.zeros(len(data), dtype=bool), 0
        for reply in replies(messages):
            turn = f"<|im_start|>assistant\n{reply}{END}".encode()
            start = data.index(turn, cursor) + len(b"<|im_start|>assistant\n")
            reference[start:start + len(turn) - len(b"<|im_start|>assistant\n")] = True
            cursor = start
        np.testing.assert_array_equal(np.array(scored), reference)
        assert texts == [reply + END for reply in replies(messages)]


@pytest.mark.parametrize("special_chat_tokens", [False, True], ids=["im_end-as-text", "im_end-special"])
def test_bpe_scored_runs_are_the_replies_and_their_end_of_turn(special_chat_tokens):
    tokenizer = bpe(special_chat_tokens)
    for messages in CONVERSATIONS:
        ids, scored, _ = encode_conversation(messages, CHATML, tokenizer)
        scored_runs = [ids[start:end] for start, end in runs(scored)]
        expected = [reply + END for reply in replies(messages)]
        # each run is the reply and end-of-turn tokenised on their own (an independent encoding)
        assert scored_runs == [tokenizer.encode(text, allow_special=special_chat_tokens) for text in expected]
        if special_chat_tokens:
            assert all(run[-1] == tokenizer.special_tokens["im_end"] for run in scored_runs)
        else:  # decoding the scored tokens gives back the reply text and the end-of-turn, nothing else
            assert [tokenizer.decode(run) for run in scored_runs] == expected
        unscored = tokenizer.decode([i for i, s in zip(ids, scored) if not s])
        for message in messages:
            if message["role"] != "assistant":
                assert message["content"] in unscored  # user and system text is context, never a target


def test_packed_windows_turn_unscored_targets_into_ignore_index(tmp_path):
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS * 10))
    data = TokenDataModule(tokenizer="bytes", path=str(tmp_path / "chats.jsonl"), format="chat", seq_len=16,
                           batch_size=2, val_fraction=0.2, cache_dir=tmp_path / "cache")
    data.setup("fit")
    assert sorted(p.name for p in data.cache_path.glob("*_scored.npy")) == ["train_scored.npy", "val_scored.npy"]
    tokens, scored = np.asarray(data.val_tokens), np.asarray(data.scored["val"])
    expected = np.where(scored, tokens.astype(np.int64), IGNORE_INDEX)
    windows = data.val_dataloader().dataset
    starts = [s for s in range(0, len(tokens) - 16, 16) if scored[s + 1:s + 17].any()]
    assert len(windows) == len(starts) > 0  # windows with nothing to score are left out
    for item, start in zip(windows, starts):
        assert item["input_ids"].tolist() == tokens[start:start + 16].tolist()
        assert item["targets"].tolist() == expected[start + 1:start + 17].tolist()
    val = data.meta["val"]
    assert val["scored_tokens"] == int(scored.sum()) < val["tokens"]
    assert data.units_per_token == 1.0  # bytes: units are the scored bytes


def test_units_count_the_scored_text_only():
    packed = pack_conversations(CONVERSATIONS, CHATML, bpe(special_chat_tokens=True))
    assert packed.units == sum(len((reply + END).encode()) for m in CONVERSATIONS for reply in replies(m))
    assert packed.tokens.shape == packed.scored.shape and packed.scored.dtype == bool


def test_a_hugging_face_folder_gives_its_template_and_its_special_end_of_turn(hf_folder, tmp_path):
    """``data.pretrained`` (what ``model.init_from`` links) picks the folder's tokenizer and chat template. That
    template has no generation prompt, so the model writes the reply's header itself: it is scored with the reply."""
    talk = [[{"role": "user", "content": "one plus two"}, {"role": "assistant", "content": "three is odd"}],
            [{"role": "system", "content": "the cat sat"}, {"role": "user", "content": "two plus two"},
             {"role": "assistant", "content": "four is even"}]]  # fmt: skip
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in talk * 10))
    data = TokenDataModule(pretrained=hf_folder, path=str(tmp_path / "chats.jsonl"), format="chat", seq_len=16,
                           batch_size=2, val_fraction=0.2, cache_dir=tmp_path / "cache")
    data.setup("fit")
    assert data.template.name == str(hf_folder / "chat_template.jinja")
    tokenizer = data.tokenizer
    (end,) = encode_special(tokenizer, END)  # one special id
    for messages in talk:
        ids, scored, _ = encode_conversation(messages, data.template, tokenizer)
        turns = [encode_special(tokenizer, f"<|im_start|>assistant\n{reply}{END}") for reply in replies(messages)]
        assert [ids[start:end_] for start, end_ in runs(scored)] == turns and turns[0][-1] == end


# --- errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "chats.jsonl line 3 is not valid JSON"),
        ('["user", "hi"]', "chats.jsonl line 3 is not a conversation"),
        ('{"messages": [{"role": "human", "content": "hi"}]}', "chats.jsonl line 3: message 0 must be"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "chats.jsonl line 3 has no assistant message"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "chats.jsonl line 3 starts with an assistant"),
    ],
)
def test_a_bad_chat_file_line_is_an_error_naming_the_line(tmp_path, line, message):
    good = json.dumps({"messages": CONVERSATIONS[0]})
    (tmp_path / "chats.jsonl").write_text(f"{good}\n\n{line}\n{good}\n")  # the blank line 2 is skipped
    with pytest.raises(ValueError, match=re.escape(message)):
        read_conversations(tmp_path / "chats.jsonl")


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_it(tmp_path):
    template = tmp_path / "counting.jinja"  # every header shows the number of messages: earlier turns change
    template.write_text("{% for m in messages %}{{ m.role }} ({{ messages|length }}): {{ m.content }}\n{% endfor %}")
    data = TokenDataModule(tokenizer="bytes", dataset="pydoc-chat", format="chat", chat_template=str(template),
                           cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=f"chat template '{re.escape(str(template))}' renders .* do not begin"):
        data.prepare_data()


def test_a_reply_holding_the_stop_string_is_refused():
    messages = [{"role": "user", "content": "End?"}, {"role": "assistant", "content": f"Write {END} to end."}]
    with pytest.raises(ValueError, match="contains '<\\|im_end\\|>', a stop string of chat template 'chatml'"):
        encode_conversation(messages, CHATML, ByteTokenizer())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"format": "chat", "layout": "samples"}, "set data.layout: packed"),
        ({"chat_template": "chatml"}, "set data.format: chat"),
        ({"format": "chat", "chat_template": "vicuna"}, "unknown chat template 'vicuna'"),
    ],
)
def test_chat_options_are_checked_when_the_data_module_is_built(tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenDataModule(tokenizer="bytes", dataset="pydoc-chat", cache_dir=tmp_path, **options)


def test_conversations_without_format_chat_are_refused(tmp_path):
    with pytest.raises(ValueError, match="holds conversations; set data.format: chat"):
        TokenDataModule(tokenizer="bytes", dataset="pydoc-chat", cache_dir=tmp_path).prepare_data()


def test_the_template_is_part_of_the_cache_key(tmp_path):
    keys = {TokenDataModule(tokenizer="bytes", dataset="pydoc-chat", format="chat", chat_template=name,
                            cache_dir=tmp_path).cache_path for name in ("chatml", "llama-3", None)}
    assert len(keys) == 2  # None is ChatML: no pretrained model names another


# --- the built-in conversations -----------------------------------------------------------------------------------
def test_pydoc_chat_answers_are_the_reference_manual_text():
    from pydoc_data.topics import topics

    def normal(text: str) -> str:  # whitespace-insensitive, with words hyphenated at a line end joined
        return " ".join(re.sub(r"([A-Za-z]-)\n\s*", r"\1", text).split())

    manual = normal("\n\n".join(topics.values()))
    conversations = pydoc_chat()
    assert conversations == pydoc_chat() and len(conversations) >= 200
    messages = [m["messages"] for m in conversations]
    assert sum(m[0]["role"] == "system" for m in messages) >= 20
    assert sum(len(replies(m)) > 1 for m in messages) >= 20  # multi-turn
    pairs = [(ms[i]["content"], ms[i + 1]["content"]) for ms in messages for i in range(len(ms) - 1)]
    assert any("the `with` statement" in asked and "context manager" in answer for asked, answer in pairs)
    for ms in messages:
        for reply in replies(ms):
            assert reply == reply.strip() and len(reply) >= 40
            for paragraph in reply.split("\n\n"):
                assert normal(paragraph) in manual, paragraph


def test_pydoc_chat_tokenises_with_a_bpe_through_the_data_module(tmp_path):
    data = TokenDataModule(tokenizer="text-bpe", tokenizer_options={"vocab_size": 400}, dataset="pydoc-chat",
                           format="chat", seq_len=64, cache_dir=tmp_path)
    data.setup("fit")  # every reply's turn boundary keeps the prefix property under the fitted BPE
    assert data.meta["train"]["documents"] + data.meta["val"]["documents"] == len(pydoc_chat())
    assert 0 < data.meta["train"]["scored_tokens"] < data.meta["train"]["tokens"]


# --- learning -----------------------------------------------------------------------------------------------------
def test_a_short_run_on_chat_data_lowers_the_validation_loss(tmp_path, one_thread):
    torch.manual_seed(0)
    module = ARModule(preset="gpt2-tiny", overrides={"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 64},
                      warmup_steps=2, optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-3}})
    data = TokenDataModule(tokenizer="bytes", dataset="pydoc-chat", format="chat", seq_len=64, batch_size=8,
                           val_fraction=0.05, cache_dir=tmp_path / "cache")
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=40, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        val_check_interval=40, check_val_every_n_epoch=None, limit_val_batches=4,
                        num_sanity_val_steps=0, use_distributed_sampler=False)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    after = trainer.callback_metrics["val/loss"].item()
    print(f"val/loss before {before:.3f} after {after:.3f}")
    assert before > 5.0 and after < before - 1.5  # from uniform over 259 bytes (5.56) to well below it
    assert trainer.callback_metrics["val/bpu"].item() == pytest.approx(after / np.log(2))  # bytes: a unit per token
