"""`armm serve` under hostile requests: bodies over the limit (announced or trickled), counts refused before anything is
encoded, text that is not Unicode, and the API key checked before the body is read, on every route."""

import http.client
import json
import select
import socket
from collections.abc import Iterator

import httpx
import pytest
import torch
from pydantic import ValidationError

import armm
from armm.cli import main
from armm.serving import app as app_module
from armm.serving.app import Limits
from armm.serving.protocol import MAX_MESSAGES, MAX_PROMPTS, MAX_STOP, MAX_STOP_CHARS, CompletionRequest
from tests.test_server import NAME, running_server

LIMIT = 64 * 1024  # the test server's --max_body_bytes
KEY = "s3cret"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    tok = armm.ByteTokenizer()
    return armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size,
                                                       max_seq_len=256)).eval(), tok


@pytest.fixture(scope="module")
def url(model_and_tokenizer):
    limits = Limits(max_tokens_limit=64, max_choices=4, max_body_bytes=LIMIT)
    with running_server(*model_and_tokenizer, limits=limits) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_url(model_and_tokenizer):
    with running_server(*model_and_tokenizer, limits=Limits(max_body_bytes=LIMIT), api_key=KEY) as base:
        yield base


def assert_openai_error(response: httpx.Response | http.client.HTTPResponse, status: int, body: bytes,
                        param: str | None = None) -> dict:
    assert response.status == status if isinstance(response, http.client.HTTPResponse) else (
        response.status_code == status), body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    return error


def raw_post(url: str, path: str, headers: dict[str, str], chunks: Iterator[bytes] = iter(())) -> tuple[
        http.client.HTTPResponse, bytes, int]:
    """POST by hand: the head, then body chunks until the server answers → (response, its body, body bytes sent)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"POST /v1{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}\r\n".encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:  # the server has answered: stop sending
                break
            sock.sendall(chunk)
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response, response.read(), sent
    finally:
        sock.close()


def chunked(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    """A body of ``total`` bytes in HTTP/1.1 chunks (no Content-Length: the server learns its size only by reading)."""
    data = b" " * size
    for _ in range(total // size):
        yield b"%x\r\n%s\r\n" % (size, data)
    yield b"0\r\n\r\n"


# --- the body limit ----------------------------------------------------------------------------------------------
def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(url):
    response, body, _ = raw_post(url, "/completions", {"Content-Length": "48000000"})
    error = assert_openai_error(response, 413, body)
    assert error["code"] == "request_too_large" and f"limit of {LIMIT} bytes" in error["message"]


def test_a_trickled_body_is_cut_off_once_it_passes_the_limit(url):
    total = 32 * 2**20
    response, body, sent = raw_post(url, "/completions", {"Transfer-Encoding": "chunked"}, chunked(total))
    assert_openai_error(response, 413, body)
    assert sent < total / 4  # answered while the client was still sending (what it sent includes socket buffers)


def test_an_ordinary_client_sending_too_much_reads_the_413_and_keeps_its_connection(url):
    with httpx.Client(timeout=30) as http:
        big = http.post(url + "/completions", json={"model": NAME, "prompt": "x" * (2 * LIMIT)})
        assert_openai_error(big, 413, big.content)
        assert http.post(url + "/completions", json={"model": NAME, "prompt": "x", "max_tokens": 2}).status_code == 200


def test_the_limit_is_an_option_of_armm_serve(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--max_body_bytes" in capsys.readouterr().out
    assert Limits().max_body_bytes == 4 * 2**20


# --- counts, before anything is encoded ----------------------------------------------------------------------------
@pytest.fixture
def encoded(model_and_tokenizer, monkeypatch) -> list[object]:
    """What the server encodes (text prompts) or renders (chat) while the test runs."""
    tok, calls = model_and_tokenizer[1], []

    def spy(real):
        return lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs)

    monkeypatch.setattr(tok, "encode_prompt", spy(tok.encode_prompt))
    monkeypatch.setattr(app_module, "render", spy(app_module.render))
    return calls


def chat(**kw):
    return {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | kw


def completion(**kw):
    return {"model": NAME, "prompt": "hi", "max_tokens": 2} | kw


@pytest.mark.parametrize("route, body, param, message", [
    ("/completions", completion(prompt=["a"] * 5), "n", "5 choices requested"),  # prompts × n over the server's 4
    ("/completions", completion(prompt=["a"] * (MAX_PROMPTS + 1)), "prompt", f"at most {MAX_PROMPTS} prompts"),
    ("/chat/completions", chat(n=5), "n", "5 choices requested"),
    ("/chat/completions", chat(messages=[{"role": "user", "content": "a"}] * (MAX_MESSAGES + 1)), "messages",
     f"at most {MAX_MESSAGES} items"),
    ("/completions", completion(stop=["a"] * (MAX_STOP + 1)), "stop", f"at most {MAX_STOP} stop strings"),
    ("/completions", completion(stop="z" * (MAX_STOP_CHARS + 1)), "stop", f"at most {MAX_STOP_CHARS}"),
    ("/completions", completion(prompt=[999] * 1000), "prompt", "accepts at most 255"),  # its length, not its ids
])
def test_counts_are_refused_before_any_prompt_is_encoded(url, encoded, route, body, param, message):
    response = httpx.post(url + route, json=body, timeout=30)
    assert message in assert_openai_error(response, 400, response.content, param)["message"]
    assert encoded == []


def test_a_bad_list_inside_a_union_is_one_error_not_one_per_item():
    """``prompt`` is a string, strings, ids or lists of ids: a million ids with one bad one must not be checked as a
    list of strings item by item (a 4 MiB body of ids took seconds of validation that way)."""
    with pytest.raises(ValidationError) as raised:
        CompletionRequest.model_validate({"model": NAME, "prompt": [1] * 100_000 + [None]})
    assert len(raised.value.errors()) <= 4


# --- text that is not Unicode: 400, never 500 ------------------------------------------------------------------------
@pytest.mark.parametrize("route, body, param", [
    ("/completions", '{"model": "tiny", "prompt": "a\\ud800"}', "prompt"),
    ("/completions", '{"model": "tiny", "prompt": ["ok", "b\\udc00"]}', "prompt"),
    ("/completions", '{"model": "tiny", "prompt": "a", "stop": ["\\ud800"]}', "stop"),
    ("/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800"}]}',
     "messages.0.content"),
    ("/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", '
                          '"text": "\\udfff"}]}]}', "messages.0.content"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field_and_the_connection_survives(url, route, body, param):
    with httpx.Client(timeout=30) as http:
        response = http.post(url + route, content=body.encode(), headers={"content-type": "application/json"})
        error = assert_openai_error(response, 400, response.content, param)
        assert "lone surrogate" in error["message"]
        assert http.get(url + "/models").status_code == 200


def test_a_body_that_is_not_utf8_is_a_400(url):
    response = httpx.post(url + "/completions", content=b'{"model": "tiny", "prompt": "\xff"}',
                          headers={"content-type": "application/json"})
    assert_openai_error(response, 400, response.content)


# --- the API key, first and everywhere ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/v1/models"])
def test_every_route_needs_the_key_the_documentation_too(keyed_url, path):
    root = keyed_url.removesuffix("/v1")
    refused = httpx.get(root + path)
    assert assert_openai_error(refused, 401, refused.content)["code"] == "invalid_api_key"
    assert httpx.get(root + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_key_is_checked_before_the_body_is_read(keyed_url):
    malformed = httpx.post(keyed_url + "/completions", content=b'{"model": ',
                           headers={"content-type": "application/json"})
    assert_openai_error(malformed, 401, malformed.content)
    response, body, _ = raw_post(keyed_url, "/completions", {"Content-Length": "48000000"})
    assert_openai_error(response, 401, body)


def test_a_vanishing_temperature_or_penalty_answers_its_limit_not_token_zero(url, model_and_tokenizer):
    """1e-300 overflowed the logits to NaN and every token came out as id 0. Now each is its limit: a temperature
    → 0 is greedy decoding, and a repetition penalty → 0 multiplies every seen token's odds without bound, so each
    token is one seen before (the prompt's or an earlier one's)."""
    _, tok = model_and_tokenizer
    prompt = [70, 71, 72]
    body = {"model": NAME, "prompt": prompt, "max_tokens": 12, "logprobs": 0, "seed": 1}
    greedy = httpx.post(url + "/completions", json={**body, "temperature": 0}, timeout=30).json()["choices"][0]
    cold = httpx.post(url + "/completions", json={**body, "temperature": 1e-300}, timeout=30).json()["choices"][0]
    assert cold["text"] == greedy["text"]
    penalised = httpx.post(url + "/completions", json={**body, "temperature": 1.0, "repetition_penalty": 1e-300},
                           timeout=30).json()["choices"][0]
    seen = [tok.decode([i]) for i in prompt]
    for token in penalised["logprobs"]["tokens"]:
        assert token in seen, (token, seen)
        seen.append(token)
