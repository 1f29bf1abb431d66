"""``backend="auto"``: the faster of the native step and PyTorch, measured once per CPU, model shape and shape
class, stored beside the native library and honoured afterwards."""

import json

import pytest
import torch

import armm
from armm.backends import auto, library
from armm.backends.native import MAX_ROWS, NativeDecoder
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not library.available(), reason="no C compiler: auto is eager here")
REAL_SAVE = auto._save  # as imported, before conftest's stub


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """Choices kept in tmp_path, read afresh; measuring counts its calls and answers from ``stored.answer``."""
    monkeypatch.setattr(library, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(auto, "_choices", None)
    monkeypatch.setattr(auto, "_save", REAL_SAVE)

    class Stored:
        answer, measured = "eager", []

        def measure(self, model, quantize, rows):
            self.measured.append(rows)
            return self.answer

        def file(self) -> dict:
            return json.loads((tmp_path / "autotune.json").read_text())

    result = Stored()
    monkeypatch.setattr(auto, "measure", result.measure)
    return result


def spy_on_native(monkeypatch) -> list[tuple[int, int]]:
    """The shapes of the forwards that run the C step, in order."""
    calls, run = [], NativeDecoder.run
    monkeypatch.setattr(NativeDecoder, "run", lambda self, weights, idx, *args: calls.append(tuple(idx.shape))
                        or run(self, weights, idx, *args))
    return calls


@pytest.fixture
def native_calls(monkeypatch):
    return spy_on_native(monkeypatch)


@pytest.mark.parametrize("answer", ["eager", "native"])
def test_the_measured_choice_is_stored_and_honoured(stored, native_calls, answer):
    stored.answer = answer
    model = tiny_model()
    tokens = armm.generate(model, [[1, 2, 3]], max_new_tokens=6)
    assert stored.measured == [3, 1]  # the 3-token prefill's class (4 rows), then a decode step's (1 row)
    assert bool(native_calls) == (answer == "native")
    file = stored.file()
    assert sorted(file.values()) == [answer, answer]
    assert any(k.endswith("|4 rows") for k in file) and any(k.endswith("|1 rows") for k in file)
    assert tokens == armm.generate(model, [[1, 2, 3]], max_new_tokens=6, backend="eager")


def test_a_later_process_reuses_the_stored_choices(stored):
    model = tiny_model()
    armm.generate(model, [[1]], max_new_tokens=3)
    assert stored.measured == [1]
    auto.forget()  # as a new process: the file is read again
    armm.generate(model, [[1]], max_new_tokens=3)
    assert stored.measured == [1]


def test_the_key_names_the_cpu_threads_model_shape_and_shape_class():
    model = tiny_model("llama-tiny")
    key = auto.key(model, "int8", 5)
    assert key.endswith("|8 rows") and f"|{torch.get_num_threads()} threads|" in key
    assert "swiglu" in key and "int8" in key and "rmsnorm" in key
    assert auto.key(model, None, 5) != key and auto.key(tiny_model(), None, 5) != auto.key(model, None, 5)
    assert [auto.shape_class(r) for r in (1, 2, 3, 5, 8, 9, 33)] == [1, 2, 4, 8, 8, 16, 64]


def test_big_forwards_run_in_pytorch_without_a_measurement(stored, native_calls):
    stored.answer = "native"
    assert not auto.prefers_native(tiny_model(), None, MAX_ROWS + 1)
    assert stored.measured == []


def test_a_damaged_choices_file_is_measured_again(stored, tmp_path):
    (tmp_path / "autotune.json").write_text("{not json")
    armm.generate(tiny_model(), [[1]], max_new_tokens=2)
    assert stored.measured == [1] and list(stored.file().values()) == ["eager"]


def test_a_real_measurement_times_both_paths_and_names_one(monkeypatch):
    monkeypatch.undo()  # the real measure (conftest stubs it for every other test)
    model = tiny_model()
    calls = spy_on_native(monkeypatch)
    assert auto.measure(model, None, 3) in ("native", "eager")
    assert calls == [(4, 1)] * (auto.ROUNDS + 1)  # the class of 3 rows is 4
