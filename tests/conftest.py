import pytest
import torch

import armm


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """A tiny model runs fastest on one thread, above all on a busy machine (generation is many small steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(preset: str = "gpt2-tiny", **overrides) -> armm.Transformer:
    """A small random model in eval mode (float32) for tests."""
    return armm.Transformer(armm.ModelConfig.from_name(preset, **overrides)).eval()
