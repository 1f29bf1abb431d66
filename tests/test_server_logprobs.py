"""`armm serve` log-probabilities: ``logprobs`` / ``top_logprobs`` / ``echo`` in OpenAI's shapes, each figure checked
against ``armm.score`` and a full forward pass of the same ids, through the official openai client."""

import httpx
import openai
import pytest
import torch

import armm
from armm.chat import render
from armm.serving.logprobs import OpenAILogprobs, TextOffsets
from tests.test_server import CHATML, NAME, post, prompt_ids, reference, running_server

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(1)
    tok = armm.ByteTokenizer()
    config = armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size, max_seq_len=256)
    return armm.Transformer(config).eval(), tok


@pytest.fixture(scope="module")
def url(model_and_tokenizer):
    with running_server(*model_and_tokenizer) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0)


def token_id(tok, name: str) -> int:
    """The byte tokenizer's id of a legacy token name: one ASCII character, ``bytes:\\xNN`` or ``<|role|>``."""
    if len(name) == 1:
        return ord(name)
    if name.startswith("bytes:"):
        return int(name.removeprefix("bytes:\\x"), 16)
    return tok.special_tokens[name.removeprefix("<|").removesuffix("|>")]


def chat_id(tok, entry) -> int:
    """The byte tokenizer's id of a chat logprob entry: its one byte, or its special token."""
    return entry.bytes[0] if entry.bytes else tok.special_tokens[entry.token.removeprefix("<|").removesuffix("|>")]


def full_logprobs(model, ids: list[int]) -> torch.Tensor:
    """``log_softmax`` of one plain forward: row t is the distribution of token t + 1 → [len(ids) - 1, V]."""
    with torch.no_grad():
        return model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)


def assert_close(got, want) -> None:
    assert len(got) == len(want)
    assert max((abs(g - w) for g, w in zip(got, want)), default=0) < TOLERANCE


# --- /v1/completions ----------------------------------------------------------------------------------------------
def test_completion_logprobs_equal_armm_score_and_top_logprobs_the_full_distribution(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = client.completions.create(model=NAME, prompt="Hello there", max_tokens=12, temperature=0, logprobs=3)
    ids = prompt_ids(tok, "Hello there")
    new = armm.generate(model, [ids], max_new_tokens=12, stop_tokens=[tok.eos_id])[0]
    logprobs = out.choices[0].logprobs
    assert [token_id(tok, t) for t in logprobs.tokens] == new and out.usage.completion_tokens == len(new)
    assert_close(logprobs.token_logprobs, armm.score(model, ids + new).token_logprobs[-len(new):].tolist())
    reference_rows = full_logprobs(model, ids + new)[-len(new):]
    for row, top, token, logprob in zip(reference_rows, logprobs.top_logprobs, new, logprobs.token_logprobs):
        best = row.topk(3)
        assert {token_id(tok, name) for name in top} == set(best.indices.tolist()) | {token}  # top 3 + the chosen
        assert_close(sorted(top.values(), reverse=True), best.values.tolist())
        assert top[logprobs.tokens[new.index(token)]] == logprob == max(top.values())  # greedy: the likeliest
    assert out.choices[0].text == tok.decode(new) and out.choices[0].text.isascii()
    assert logprobs.text_offset == list(range(len(new)))  # ASCII: one character per token


def test_a_sampled_completion_reports_the_raw_distribution_not_the_sampling_one(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = client.completions.create(model=NAME, prompt="seeded", max_tokens=10, temperature=1.7, seed=3,
                                    logprobs=0, extra_body={"top_k": 50})
    ids = prompt_ids(tok, "seeded")
    new = armm.generate(model, [ids], max_new_tokens=10, sampler="temperature=1.7,top_k=50", seed=3,
                        stop_tokens=[tok.eos_id])[0]
    logprobs = out.choices[0].logprobs
    assert [token_id(tok, t) for t in logprobs.tokens] == new
    assert_close(logprobs.token_logprobs, armm.score(model, ids + new).token_logprobs[-len(new):].tolist())
    assert all(top == {name: lp} for top, name, lp in zip(logprobs.top_logprobs, logprobs.tokens,
                                                           logprobs.token_logprobs))  # logprobs=0: the chosen only


def test_echo_scores_the_prompt_and_max_tokens_0_generates_nothing(client, model_and_tokenizer):
    """lm-eval-harness's loglikelihood request: token-id prompts, echo, max_tokens=0."""
    model, tok = model_and_tokenizer
    prompts = [prompt_ids(tok, "The cat sat"), prompt_ids(tok, "on the mat, é")]
    out = client.completions.create(model=NAME, prompt=prompts, echo=True, max_tokens=0, logprobs=1)
    assert [c.index for c in out.choices] == [0, 1] and out.usage.completion_tokens == 0
    for choice, ids in zip(out.choices, prompts):
        logprobs = choice.logprobs
        assert choice.text == tok.decode(ids) and choice.finish_reason == "length"
        assert [token_id(tok, t) for t in logprobs.tokens] == ids
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert_close(logprobs.token_logprobs[1:], armm.score(model, ids).token_logprobs.tolist())
        assert logprobs.text_offset[:2] == [0, 0] and logprobs.text_offset[-1] == len(choice.text) - 1


def test_echo_with_a_completion_scores_prompt_and_completion_as_one_sequence(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = client.completions.create(model=NAME, prompt="Once", echo=True, max_tokens=6, temperature=0, logprobs=2,
                                    n=2)
    ids = prompt_ids(tok, "Once")
    new = armm.generate(model, [ids], max_new_tokens=6, stop_tokens=[tok.eos_id])[0]
    for choice in out.choices:  # greedy: both choices alike
        assert choice.text == "Once" + tok.decode(new)
        assert [token_id(tok, t) for t in choice.logprobs.tokens] == ids + new
        assert choice.logprobs.token_logprobs[0] is None
        assert_close(choice.logprobs.token_logprobs[1:], armm.score(model, ids + new).token_logprobs.tolist())
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 2 * len(new)


def test_echo_without_logprobs_only_prepends_the_prompt(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    plain = client.completions.create(model=NAME, prompt="Hi you", max_tokens=5, temperature=0)
    echoed = client.completions.create(model=NAME, prompt="Hi you", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "Hi you" + plain.choices[0].text and echoed.choices[0].logprobs is None


def test_streamed_completion_chunks_carry_their_tokens_logprobs_and_offsets(client):
    """Sampled bytes: partial and broken UTF-8, held back until a character is whole or known to be broken."""
    args = dict(model=NAME, prompt="A long tale of", max_tokens=40, temperature=1, seed=5, logprobs=2)
    full = client.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **args)]
    text, tokens, logprobs = "", [], []
    for chunk in chunks:
        if chunk.logprobs is None:
            assert chunk.text == "" and chunk.finish_reason
            continue
        assert chunk.logprobs.text_offset[0] == len(text)  # each chunk's tokens begin where its text does
        text += chunk.text
        tokens += chunk.logprobs.tokens
        logprobs += chunk.logprobs.token_logprobs
    assert text == full.text and tokens == full.logprobs.tokens and len(chunks) > 3
    assert_close(logprobs, full.logprobs.token_logprobs)
    assert any(t.startswith("bytes:") for t in tokens) and any(len(c.logprobs.tokens) > 1 for c in chunks if c.logprobs)


# --- /v1/chat/completions -----------------------------------------------------------------------------------------
def test_chat_logprobs_equal_armm_score_with_sorted_top_logprobs(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    messages = [{"role": "user", "content": "Hi!"}]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=15, temperature=0, logprobs=True,
                                         top_logprobs=5)
    rendered = render(messages, CHATML, tok)
    text, count = reference(model, tok, rendered.ids, 15, rendered.stop_token_ids, CHATML.stop_strings)
    content = out.choices[0].logprobs.content
    assert out.choices[0].message.content == text and len(content) == count == out.usage.completion_tokens
    new = [chat_id(tok, entry) for entry in content]
    assert_close([e.logprob for e in content], armm.score(model, rendered.ids + new).token_logprobs[-count:].tolist())
    reference_rows = full_logprobs(model, rendered.ids + new)[-count:]
    for row, entry in zip(reference_rows, content):
        top = [e.logprob for e in entry.top_logprobs]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert [chat_id(tok, e) for e in entry.top_logprobs] == row.topk(5).indices.tolist()
        assert_close(top, row.topk(5).values.tolist())
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)  # greedy
    assert b"".join(bytes(e.bytes or []) for e in content).startswith(text.encode())
    assert out.choices[0].logprobs.refusal is None


def test_chat_without_top_logprobs_lists_none_and_without_logprobs_returns_null(client):
    messages = [{"role": "user", "content": "Hey"}]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=4, temperature=0, logprobs=True)
    content = out.choices[0].logprobs.content
    assert len(content) == 4 and all(e.top_logprobs == [] for e in content)
    plain = client.chat.completions.create(model=NAME, messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_streamed_chat_logprobs_equal_the_non_streamed_ones(client):
    args = dict(model=NAME, messages=[{"role": "user", "content": "Tell me"}], max_tokens=40, temperature=1, seed=2,
                logprobs=True, top_logprobs=2)
    full = client.chat.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in client.chat.completions.create(stream=True, **args) if c.choices]
    streamed = [e for c in chunks if c.logprobs for e in c.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in full.logprobs.content] and len(chunks) > 3
    assert_close([e.logprob for e in streamed], [e.logprob for e in full.logprobs.content])
    texts = [c for c in chunks if c.delta.content]
    assert "".join(c.delta.content for c in texts) == full.message.content
    assert any(len(c.logprobs.content) > 1 for c in texts)  # some text waited for a later token
    for chunk in texts[:-1]:  # each chunk's text is its own tokens' bytes (the last one's may end at a stop string)
        data = b"".join(bytes(e.bytes or []) for e in chunk.logprobs.content)
        assert chunk.delta.content == data.decode("utf-8", errors="replace")


# --- token names, bytes and offsets -------------------------------------------------------------------------------
def test_tokens_holding_part_of_a_character_are_named_by_their_bytes():
    tok = armm.ByteTokenizer()
    bpe = armm.get_plugins().tokenizers.get("text-bpe")(vocab_size=259)  # the byte alphabet and no merges
    bpe.fit(["é 🙂"])
    for tokenizer in (tok, bpe):
        names = OpenAILogprobs(tokenizer)
        assert [names.piece(t) for t in tokenizer.encode("aé")] == [("a", b"a"), ("bytes:\\xc3", b"\xc3"),
                                                                     ("bytes:\\xa9", b"\xa9")]
        assert names.piece(tokenizer.eos_id) == ("<|eos|>", None)
        assert b"".join(tokenizer.token_bytes(t) for t in tokenizer.encode("x 🙂 é!")) == "x 🙂 é!".encode()


def test_text_offsets_point_at_the_character_a_token_begins_or_finishes():
    def offsets(pieces):
        text_offsets = TextOffsets()
        return [text_offsets.advance(piece) for piece in pieces]

    assert offsets([b"x\xc3", b"\xa9", b"a"]) == [0, 1, 2]  # "xéa": the é's second byte points at the é
    assert offsets([b"\xe2\x82", b"\xac", b"", b"z"]) == [0, 0, 1, 1]  # "€z"
    assert offsets([b"\xc3", b"a"]) == [0, 1]  # a lone lead byte is one U+FFFD, as decode makes it


# --- errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, param", [
    ("/completions", {"prompt": "hi", "logprobs": 6}, "logprobs"),
    ("/completions", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("/completions", {"prompt": "hi", "logprobs": True}, "logprobs"),
    ("/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),  # generates nothing without echo
    ("/completions", {"prompt": "hi", "echo": "yes"}, "echo"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, "logprobs"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
])
def test_bad_logprob_requests_get_openai_errors(url, path, body, param):
    response = post(url, path, {"model": NAME, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_the_openai_client_raises_bad_request_for_top_logprobs_without_logprobs(client, url):
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], top_logprobs=3)
    assert httpx.get(url + "/models").status_code == 200  # the server goes on
