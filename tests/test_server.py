"""`armm serve`: a real uvicorn server on a loopback port, driven by httpx and the official openai client,
checked against armm.generate on the same weights."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
import uvicorn

import armm
from armm.chat import get_template, render
from armm.cli import main
from armm.serving.cli import is_loopback
from armm.serving import engine as engine_module
from armm.serving.app import Limits, create_app
from armm.serving.engine import Engine
from armm.textstream import TextStream

NAME = "tiny"
CHATML = get_template("chatml")
CONTEXT = 2048  # long enough for a generation that is still running when the client leaves


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    tok = armm.ByteTokenizer()
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size,
                                                        max_seq_len=CONTEXT)).eval()
    return model, tok


@contextmanager
def running_server(model, tok, limits=Limits(max_tokens_limit=1500, max_choices=4), **kwargs):
    """A uvicorn server in a background thread on a free loopback port → its /v1 base URL; always shut down."""
    app = create_app(Engine(model, tok), NAME, CHATML, limits=limits, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def url(model_and_tokenizer):
    with running_server(*model_and_tokenizer) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0)


def post(url, path, body, timeout=30):
    return httpx.post(url + path, json=body, timeout=timeout)


def reference(model, tok, ids, max_tokens, stop_ids=(), stop_strings=(), sampler="greedy", seed=None):
    """What the server must answer, straight from armm.generate: (text, number of generated tokens)."""
    new = armm.generate(model, [ids], max_new_tokens=max_tokens, sampler=sampler, seed=seed,
                        stop_tokens=[tok.eos_id, *stop_ids])[0]
    text = tok.decode(new)
    for stop in stop_strings:
        if stop in text:
            text = text[:text.index(stop)]
    return text, len(new)


def prompt_ids(tok, prompt):
    return [tok.bos_id, *tok.encode(prompt)]


# --- the happy paths ------------------------------------------------------------------------------------------
def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_greedy_completion_matches_generate_with_usage_counts(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = client.completions.create(model=NAME, prompt="Hello there", max_tokens=24, temperature=0)
    text, count = reference(model, tok, prompt_ids(tok, "Hello there"), 24)
    assert out.choices[0].text == text and out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(prompt_ids(tok, "Hello there")) == 12
    assert out.usage.completion_tokens == count == 24
    assert out.usage.total_tokens == 36


def test_chat_completion_renders_the_template_and_matches_generate(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)
    rendered = render(messages, CHATML, tok)
    text, count = reference(model, tok, rendered.ids, 20, rendered.stop_token_ids, CHATML.stop_strings)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == text
    assert out.usage.prompt_tokens == len(rendered.ids) == len(rendered.text.encode())
    assert out.usage.completion_tokens == count


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_chunks_concatenate_to_the_non_streamed_text(client, chat):
    args = dict(model=NAME, max_tokens=30, temperature=0, stop=["zz"])
    if chat:
        messages = [{"role": "user", "content": "Tell me something"}]
        full = client.chat.completions.create(messages=messages, **args).choices[0]
        chunks = list(client.chat.completions.create(messages=messages, stream=True, **args))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert full.message.content == streamed
    else:
        full = client.completions.create(prompt="Once upon a time", **args).choices[0]
        chunks = list(client.completions.create(prompt="Once upon a time", stream=True, **args))
        streamed = "".join(c.choices[0].text for c in chunks)
        assert full.text == streamed
    assert len(chunks) > 3  # it really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.finish_reason


def test_streamed_usage_when_asked(url):
    body = {"model": NAME, "prompt": "abc", "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_text_before_it(client, model_and_tokenizer, stream):
    model, tok = model_and_tokenizer
    free, _ = reference(model, tok, prompt_ids(tok, "Hello there"), 40)
    start = next(i for i in range(len(free) - 1) if free[i] != free[i + 1] and "\ufffd" not in free[i:i + 2])
    stop = free[start:start + 2]  # the first two-character string the greedy continuation produces
    assert 0 < start < 39
    args = dict(model=NAME, prompt="Hello there", max_tokens=40, temperature=0, stop=[stop, "never-there"])
    if stream:
        chunks = list(client.completions.create(stream=True, **args))
        text, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        choice = client.completions.create(**args).choices[0]
        text, finish = choice.text, choice.finish_reason
    assert text == free[:start] and finish == "stop"


def test_n_choices_with_a_seed_are_reproducible_and_match_generate(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    args = dict(model=NAME, prompt="seeded", max_tokens=12, temperature=1.0, n=2, seed=7)
    first, again = client.completions.create(**args), client.completions.create(**args)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.text for c in again.choices] and texts[0] != texts[1]
    ids = prompt_ids(tok, "seeded")
    assert texts == [reference(model, tok, ids, 12, sampler="temperature=1", seed=7 + i)[0] for i in range(2)]
    assert first.usage.prompt_tokens == len(ids)  # the prompt counts once for all choices


def test_openai_parameters_map_to_armm_sampler_specs():
    from armm.serving.protocol import CompletionRequest

    def spec(**kw):
        return CompletionRequest(model=NAME, prompt="x", **kw).sampler_spec()

    assert spec() == "temperature=1"
    assert spec(temperature=0, top_p=0.5) == "greedy"
    assert spec(temperature=0.7, top_p=0.9, top_k=40) == "temperature=0.7,top_k=40,top_p=0.9"
    assert spec(presence_penalty=0.5, frequency_penalty=0.25, temperature=0) == (
        "presence_penalty=0.5,frequency_penalty=0.25,greedy")
    assert armm.build_sampler(spec(temperature=0.7, top_p=0.9, top_k=40, presence_penalty=1, min_p=0.1))


# --- concurrency, streaming back-pressure and disconnects -------------------------------------------------------
def test_concurrent_requests_are_batched_and_equal_sequential_ones(url, monkeypatch):
    prompts = [f"prompt number {i} " * (1 + i % 3) for i in range(8)]
    body = lambda p: {"model": NAME, "prompt": p, "max_tokens": 16, "temperature": 0}  # noqa: E731
    sequential = [post(url, "/completions", body(p)).json()["choices"][0]["text"] for p in prompts]
    calls = []  # rows per armm.generate call

    def counting_generate(model, prompts, real=engine_module.generate, **kwargs):
        calls.append(len(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(engine_module, "generate", counting_generate)
    with ThreadPoolExecutor(9) as pool:
        busy = pool.submit(post, url, "/completions", body("keep the worker busy") | {"max_tokens": 300})
        time.sleep(0.3)
        responses = list(pool.map(lambda p: post(url, "/completions", body(p)), prompts))
        assert busy.result().status_code == 200
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["choices"][0]["text"] for r in responses] == sequential
    assert len(calls) < 1 + len(prompts) and sum(calls) == 1 + len(prompts)  # the queued requests shared calls


def test_a_client_that_leaves_mid_stream_frees_the_worker(url):
    body = {"model": NAME, "prompt": "a very long story", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/completions", json=body) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 5:
                    break
            started = time.monotonic()
            assert http.get(url + "/models").status_code == 200  # the event loop answers during generation
            assert time.monotonic() - started < 1.0
    assert_next_request_is_prompt(url)


def test_a_client_that_gives_up_on_a_long_completion_frees_the_worker(url):
    body = {"model": NAME, "prompt": "a very long story", "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(url, "/completions", body, timeout=0.5)
    assert_next_request_is_prompt(url)


def assert_next_request_is_prompt(url):
    """The abandoned 1500-token generation takes several seconds; the next request must not wait for it."""
    started = time.monotonic()
    out = post(url, "/completions", {"model": NAME, "prompt": "next", "max_tokens": 5, "temperature": 0})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 5
    assert time.monotonic() - started < 2.5


def test_text_stream_holds_back_partial_characters_and_stop_string_prefixes():
    tok = armm.ByteTokenizer()
    stream = TextStream(tok, ["<|im_end|>"])
    pieces = [stream.push(b) for b in tok.encode("héllo <|im_ennd <|im_end|> after")]
    assert "".join(pieces) == "héllo <|im_ennd " and stream.finish_reason == "stop"
    assert all("\ufffd" not in p for p in pieces)  # é is released whole, never half
    assert pieces[tok.encode("héllo <|im_e").__len__() - 1] == ""  # "<|im_e" might still become the stop string


# --- limits, errors and the API key ---------------------------------------------------------------------------
def completion(**kw):
    return {"model": NAME, "prompt": "hi", "max_tokens": 4} | kw


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "tiny", "prompt": ', 400, None),  # malformed JSON
    (b'[1, 2]', 400, None),
    ({"model": NAME, "max_tokens": 4}, 400, "prompt"),  # missing field
    (completion(max_tokens="4"), 400, "max_tokens"),  # wrong type
    (completion(temperature="hot"), 400, "temperature"),
    (completion(max_tokens=-1), 400, "max_tokens"),  # negative
    (completion(temperature=-0.5), 400, "temperature"),
    (completion(top_p=0), 400, "top_p"),
    (completion(n=0), 400, "n"),
    (completion(n=5), 400, "n"),  # over the server's max_choices
    (completion(max_tokens=1501), 400, "max_tokens"),  # over --max-tokens-limit
    (completion(prompt="x" * 600, max_tokens=1500), 400, "max_tokens"),  # prompt + max_tokens > context
    (completion(prompt="x" * CONTEXT), 400, "prompt"),  # the prompt alone fills the context
    (completion(prompt=[1, 2, 999]), 400, "prompt"),  # a token id outside the vocabulary
    (completion(stop=[""]), 400, "stop"),
    (completion(best_of=2), 400, None),  # not supported: refused, not ignored
    (completion(model="gpt-4"), 404, "model"),  # unknown model
])
def test_bad_completion_requests_get_openai_errors(url, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + "/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "wizard", "content": "hi"}], "messages.0.role"),
    ([{"role": "user", "content": 5}], "messages.0.content.str"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], None),
])
def test_bad_chat_requests_get_openai_errors(url, messages, param):
    response = post(url, "/chat/completions", {"model": NAME, "messages": messages})
    assert response.status_code == 400
    if param:
        assert response.json()["error"]["param"] == param


def test_unknown_routes_answer_in_the_error_shape(url):
    response = httpx.get(url + "/nothing-here")
    assert response.status_code == 404 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_an_api_key_is_required_when_set(model_and_tokenizer):
    with running_server(*model_and_tokenizer, api_key="s3cret") as base:
        assert httpx.get(base + "/models").status_code == 401
        wrong = httpx.get(base + "/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="x", max_retries=0).models.list()
        good = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0)
        assert good.completions.create(model=NAME, prompt="a", max_tokens=2).usage.completion_tokens == 2


def test_loopback_detection_for_the_no_key_warning():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.com"]))


def test_serve_is_a_cli_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "--max_tokens_limit" in capsys.readouterr().out


def test_a_client_that_stops_reading_a_stream_blocks_no_one(url):
    """A stream of about a megabyte that its client never reads (the socket buffers fill, so the server's writes to
    it stall): the event loop keeps answering, the worker finishes other requests, and once the client goes away
    the next request is served at once."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"model": NAME, "prompt": "a very long story", "max_tokens": 1500, "n": 4,
                       "temperature": 0, "stream": True}).encode()
    slow = socket.create_connection((host, int(port)))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        time.sleep(0.5)  # the slow client's generation is running and its unread chunks pile up
        started = time.monotonic()
        assert httpx.get(url + "/models", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        other = post(url, "/completions", {"model": NAME, "prompt": "other", "max_tokens": 5, "temperature": 0},
                     timeout=60)
        assert other.status_code == 200 and other.json()["usage"]["completion_tokens"] == 5
    finally:
        slow.close()
    assert_next_request_is_prompt(url)
