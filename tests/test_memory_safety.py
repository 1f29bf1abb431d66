"""Hostile calls into decoding (issue 15's reproductions), each in a subprocess so that a crash fails the test
instead of killing pytest: every one must exit 0 with either a one-line error or logits equal to PyTorch's."""

import subprocess
import sys

import pytest

from armm.backends import library

SCRIPT = r'''
import gc, sys, threading
import torch
import armm
from armm.backends import open_decoder
from armm.backends.base import Decoder

case = sys.argv[1]
torch.manual_seed(0)


def model_and_decoders(backend):
    """A model, a decoder of `backend` and a plain PyTorch decoder on it, both prefilled with the same prompt."""
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny")).eval()
    fast, plain = open_decoder(model, 2, 16, backend), Decoder(model, 2, 16)
    prompt, pad = torch.tensor([[5, 6, 7], [0, 8, 9]]), torch.tensor([0, 1])
    with torch.inference_mode():
        fast.forward(prompt, 0, pad), plain.forward(prompt, 0, pad)
    return model, fast, plain, pad


def clobber_freed_memory():
    gc.collect()
    junk = [torch.full((1 << 16,), float("nan")) for _ in range(64)]  # reuse what was freed, with NaN
    del junk


def step_both(fast, plain, pad, **kwargs):
    token = torch.tensor([[11], [12]])
    with torch.inference_mode():
        return fast.forward(token, 3, pad, **kwargs), plain.forward(token, 3, pad, **kwargs)


def report(fn):
    try:
        result = fn()
    except (ValueError, IndexError, RuntimeError) as error:
        message = str(error)
        assert "\n" not in message, f"a multi-line error: {message!r}"
        print(f"ERROR {type(error).__name__}: {message}")
        return
    if result is not None:
        got, expected = result
        assert torch.isfinite(got).all(), "non-finite logits"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    print("EQUAL")


for backend in ("native", "auto"):
    model, fast, plain, pad = model_and_decoders(backend)
    if case == "negative-start":
        report(lambda: fast.forward(torch.tensor([[1], [1]]), -1))
        report(lambda: model(torch.tensor([[1], [1]]), cache=fast.cache, start=-1))
    elif case in ("pad-negative", "pad-very-negative", "pad-short"):
        bad = {"pad-negative": [-5, 0], "pad-very-negative": [0, -100], "pad-short": [0]}[case]
        report(lambda: step_both(fast, plain, torch.tensor(bad)))
    elif case in ("half", "bfloat16", "float64"):
        getattr(model, case if case != "float64" else "double")()
        clobber_freed_memory()
        report(lambda: step_both(fast, plain, pad))
    elif case == "data-assignment":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.data = torch.randn_like(module.weight) * 0.02
        clobber_freed_memory()
        report(lambda: step_both(fast, plain, pad))
    elif case == "new-parameter":
        attn = model.blocks[0].attn
        attn.qkv.weight = torch.nn.Parameter(torch.randn_like(attn.qkv.weight) * 0.02)
        clobber_freed_memory()
        report(lambda: step_both(fast, plain, pad))
    elif case == "load-state-dict-assign":
        other = armm.Transformer(model.config).state_dict()
        model.load_state_dict(other, assign=True)
        del other
        clobber_freed_memory()
        report(lambda: step_both(fast, plain, pad))
    elif case == "two-threads":
        prompts = [[[1 + i, 2, 3]] * (1 + i % 3) for i in range(8)]
        expected = [armm.generate(model, p, max_new_tokens=24, backend=backend) for p in prompts]
        results, errors = [None] * len(prompts), []

        def work(i):
            try:
                for _ in range(3):
                    results[i] = armm.generate(model, prompts[i], max_new_tokens=24, backend=backend)
            except Exception as error:  # collected and reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert results == expected, "a generation running beside another gave other tokens"
        print("EQUAL")
'''

CASES = {  # case → what each backend must print for each call: EQUAL, or an error containing the text
    "negative-start": ["start must be an integer cache slot >= 0, got -1"] * 2,
    "pad-negative": [r"0 <= pad < start + T = 4, got [-5, 0]"],
    "pad-very-negative": [r"0 <= pad < start + T = 4, got [0, -100]"],
    "pad-short": ["pad must be an integer"],
    "half": ["the KV-cache is torch.float32 on cpu but the model's weights are torch.float16"],
    "bfloat16": ["the KV-cache is torch.float32 on cpu but the model's weights are torch.bfloat16"],
    "float64": ["the KV-cache is torch.float32 on cpu but the model's weights are torch.float64"],
    "data-assignment": ["EQUAL"],
    "new-parameter": ["EQUAL"],
    "load-state-dict-assign": ["EQUAL"],
    "two-threads": ["EQUAL"],
}


@pytest.mark.skipif(not library.available(), reason="no C compiler: armm decodes in PyTorch here")
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_calls_give_an_error_or_pytorchs_logits_and_never_crash(case):
    result = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    expected = CASES[case] * 2  # the native backend, then auto
    assert len(lines) == len(expected), result.stdout
    for line, want in zip(lines, expected):
        assert line == "EQUAL" if want == "EQUAL" else (line.startswith("ERROR ") and want in line), (line, want)
