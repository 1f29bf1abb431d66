import pytest
import torch

import armm


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


def tiny_model(preset: str = "gpt2-tiny", **overrides) -> armm.Transformer:
    """A small random model in eval mode (float32) for tests."""
    return armm.Transformer(armm.ModelConfig.from_name(preset, **overrides)).eval()
