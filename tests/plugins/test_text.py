"""The text plugin: byte-level BPE (text-bpe), checked by the contract suite and against Hugging Face tokenizers."""

import json
import pickle

import pytest
from hypothesis import strategies as st
from pydoc_data.topics import topics
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from armm.datasource import read_source
from armm.testing import TokenizerContract
from armm_text import BPETokenizer

TOPICS = [topics[key] for key in sorted(topics)]
TRAIN = [text for i, text in enumerate(TOPICS) if i % 4]
HELD_OUT = [text for i, text in enumerate(TOPICS) if not i % 4]


@pytest.fixture(scope="module")
def fitted() -> BPETokenizer:
    tokenizer = BPETokenizer(vocab_size=1000)
    tokenizer.fit(TRAIN)
    return tokenizer


class TestTextBPEContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self, fitted):
        return fitted

    @pytest.fixture
    def samples(self):
        return ["hello", "naïve café — 日本語 🤖\n\ttabs  trailing  \n", " ", HELD_OUT[0][:2000]]

    def sample_strategy(self, tokenizer):
        return st.text()


def test_jsonl_holds_a_text_line_per_sample_that_reads_back_as_training_data(fitted, tmp_path):
    samples = ["naïve\r\ncafé", '{"not": "json"}', " "]
    [path] = fitted.write(samples, tmp_path / "out.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": sample} for sample in samples]
    assert read_source(fitted, path) == samples
    assert [p.name for p in fitted.write(samples, tmp_path / "out")] == ["out-0.txt", "out-1.txt", "out-2.txt"]


def test_every_pydoc_topic_round_trips_exactly(fitted):
    for text in TOPICS:
        assert fitted.decode(fitted.encode(text)) == text


def test_fitting_compresses_held_out_text(fitted):
    num_bytes = sum(fitted.num_units(text) for text in HELD_OUT)
    num_tokens = sum(len(fitted.encode(text)) for text in HELD_OUT)
    assert num_bytes == sum(len(text.encode("utf-8")) for text in HELD_OUT)
    assert num_bytes / num_tokens > 2.5


def test_num_units_counts_utf8_bytes(fitted):
    assert fitted.num_units("aé日🤖") == 1 + 2 + 3 + 4


def test_special_tokens_have_their_own_ids_and_are_never_split(fitted):
    assert fitted.special_tokens == {"bos": 0, "eos": 1, "pad": 2}
    eos = fitted.eos_id
    joined = fitted.encode("end<|endoftext|>next", allow_special=True)
    assert joined == [*fitted.encode("end"), eos, *fitted.encode("next")]
    assert fitted.decode([fitted.bos_id, *fitted.encode("hi"), eos, fitted.pad_id]) == "hi"
    ordinary = {i for text in TOPICS for i in fitted.encode(text)}
    assert ordinary.isdisjoint(fitted.special_tokens.values())


def test_a_special_token_string_in_plain_text_is_ordinary_text(fitted):
    text = "a document that mentions <|endoftext|> and <|pad|> literally"
    ids = fitted.encode(text)
    assert set(ids).isdisjoint(fitted.special_tokens.values())
    assert fitted.decode(ids) == text
    assert pickle.loads(pickle.dumps(fitted)).encode(text) == ids  # DataLoader workers unpickle tokenizers


def test_extra_special_tokens_are_exposed_under_their_roles():
    tokenizer = BPETokenizer(vocab_size=300, extra_special_tokens={"sep": "<|sep|>"})
    tokenizer.fit(TRAIN[:5])
    sep = tokenizer.special_tokens["sep"]
    assert sep not in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    assert tokenizer.encode("a<|sep|>b", allow_special=True) == [*tokenizer.encode("a"), sep, *tokenizer.encode("b")]
    with pytest.raises(ValueError, match="may not redefine"):
        BPETokenizer(extra_special_tokens={"eos": "</s>"})


def gpt2_style_tokenizer_json(tmp_path) -> tuple[HFTokenizer, str]:
    """A tokenizer.json laid out like Hugging Face's GPT-2 one (byte-level BPE, one special <|endoftext|>)."""
    reference = HFTokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.post_processor = processors.ByteLevel(trim_offsets=False)
    reference.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    reference.train_from_iterator(TRAIN[:20], trainer)
    path = tmp_path / "tokenizer.json"
    reference.save(str(path))
    return reference, str(path)


def test_from_file_loads_a_tokenizer_json_written_by_tokenizers(tmp_path):
    reference, path = gpt2_style_tokenizer_json(tmp_path)
    loaded = BPETokenizer.from_file(path, bos=None, eos="<|endoftext|>", pad=None)
    assert loaded.vocab_size == reference.get_vocab_size()
    assert loaded.special_tokens == {"eos": reference.token_to_id("<|endoftext|>")}
    for text in HELD_OUT:
        assert loaded.encode(text) == reference.encode(text).ids
        assert loaded.decode(loaded.encode(text)) == text
    joined = "first<|endoftext|>second"
    assert loaded.encode(joined, allow_special=True) == reference.encode(joined).ids
    assert loaded.decode(reference.encode(joined).ids) == "firstsecond"


def chat_tokenizer_json(tmp_path) -> tuple[HFTokenizer, str]:
    """A tokenizer.json like Qwen2's: besides <|endoftext|>, the chat markers as special added tokens, and one added
    token that is not special."""
    reference, _ = gpt2_style_tokenizer_json(tmp_path)
    reference.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    reference.add_tokens(["<tool_call>"])
    path = tmp_path / "chat.json"
    reference.save(str(path))
    return reference, str(path)


def test_every_special_token_of_a_file_is_special_not_only_the_roles(tmp_path):
    reference, path = chat_tokenizer_json(tmp_path)
    loaded = BPETokenizer.from_file(path, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    ids = {text: reference.token_to_id(text) for text in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert loaded.special_tokens == {"eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"]}
    assert loaded.special_texts == ids  # "<tool_call>" is an added token, but not special
    text = "<|im_start|>user\nhi <tool_call><|im_end|>"
    assert loaded.encode(text, allow_special=True) == reference.encode(text).ids  # as transformers encodes it
    assert set(loaded.encode(text)).isdisjoint(ids.values())  # plain text never yields a special token
    assert loaded.decode(reference.encode(text).ids) == "user\nhi <tool_call>"
    assert loaded.decode(loaded.encode(text)) == text
    loaded.save(tmp_path)
    for again in (BPETokenizer.load(tmp_path), pickle.loads(pickle.dumps(loaded))):
        assert again.special_texts == ids and again.encode(text) == loaded.encode(text)
        assert again.encode(text, allow_special=True) == loaded.encode(text, allow_special=True)


def test_unnamed_special_tokens_make_tokens_of_the_vocabulary_special(tmp_path):
    reference, path = chat_tokenizer_json(tmp_path)
    loaded = BPETokenizer.from_file(path, bos=None, eos="<|endoftext|>", pad=None,
                                    unnamed_special_tokens=["<tool_call>"])
    tool = reference.token_to_id("<tool_call>")
    assert loaded.special_texts["<tool_call>"] == tool and loaded.vocab_size == reference.get_vocab_size()
    assert tool not in loaded.encode("a <tool_call> b") and loaded.encode("<tool_call>", allow_special=True) == [tool]
    loaded.save(tmp_path)  # the tokenizer.json it writes marks it special
    assert HFTokenizer.from_file(str(tmp_path / "tokenizer.json")).get_added_tokens_decoder()[tool].special
    with pytest.raises(ValueError, match=r"\['<\|tool\|>'\] are not in the vocabulary of .*chat.json"):
        BPETokenizer.from_file(path, bos=None, eos="<|endoftext|>", pad=None, unnamed_special_tokens=["<|tool|>"])
    with pytest.raises(ValueError, match="must be distinct non-empty strings"):
        BPETokenizer(unnamed_special_tokens=["<|endoftext|>"])


def test_fit_reserves_unnamed_special_tokens():
    tokenizer = BPETokenizer(vocab_size=300, unnamed_special_tokens=["<|im_start|>"])
    tokenizer.fit(TRAIN[:5])
    start = tokenizer.special_texts["<|im_start|>"]
    assert start not in tokenizer.special_tokens.values()  # special, without a role
    assert tokenizer.encode("<|im_start|>x", allow_special=True) == [start, *tokenizer.encode("x")]
    assert tokenizer.options()["unnamed_special_tokens"] == ["<|im_start|>"]


def test_from_file_names_a_special_token_missing_from_the_vocabulary(tmp_path):
    _, path = gpt2_style_tokenizer_json(tmp_path)
    with pytest.raises(ValueError, match=r"<\|bos\|>.*not in the vocabulary of .*tokenizer.json"):
        BPETokenizer.from_file(path, eos="<|endoftext|>", pad=None)


def test_from_file_rejects_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        BPETokenizer.from_file(tmp_path / "nothing.json")
    (tmp_path / "other.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="other.json is not a Hugging Face tokenizer.json"):
        BPETokenizer.from_file(tmp_path / "other.json")


def test_an_unfitted_tokenizer_says_to_fit_or_load_it():
    with pytest.raises(ValueError, match=r"no vocabulary yet: call fit\(samples\).*load"):
        BPETokenizer().encode("text")


@pytest.mark.parametrize("corpus", [[], ["", ""]])
def test_fitting_on_an_empty_corpus_is_refused(corpus):
    with pytest.raises(ValueError, match="empty corpus"):
        BPETokenizer(vocab_size=300).fit(corpus)


def test_a_vocab_size_below_bytes_plus_specials_is_refused():
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        BPETokenizer(vocab_size=100).fit(["text"])


def test_read_takes_one_sample_per_text_file_and_names_a_binary_one(fitted, tmp_path):
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# second\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("ignored\n", encoding="utf-8")
    assert fitted.read(tmp_path) == ["first\n", "# second\n"]
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ValueError, match=f"{binary} is not UTF-8 text"):
        fitted.read(tmp_path)
