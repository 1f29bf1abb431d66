import json

import pytest
import torch

import armm
import armm.config


@pytest.mark.parametrize("name", sorted(armm.PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    config = armm.ModelConfig.from_name(name)
    config.save(tmp_path / "config.json")
    assert armm.ModelConfig.load(tmp_path / "config.json") == config


def test_gpt2_124m_preset_has_gpt2_small_parameter_count():
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-124m", vocab_size=50257))
    assert model.num_params(non_embedding=False) - model.pos_emb.weight.numel() == pytest.approx(124.4e6, rel=0.01)


def test_defaults_follow_the_architecture():
    assert armm.ModelConfig(d_model=128).d_ff == 512
    assert armm.ModelConfig(d_model=128, mlp="swiglu").d_ff == 384  # 2/3 * 4 * 128 rounded up to 64
    assert armm.ModelConfig(n_head=8).n_kv_head == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(position="alibi"), "position"),
        (dict(d_model=100, n_head=3), "divisible by n_head"),
        (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_configs_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        armm.ModelConfig(**kwargs)


def test_unknown_preset_and_unknown_field(tmp_path):
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'; available: gpt2-"):
        armm.ModelConfig.from_name("gpt5")
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 3}))
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['n_layers'\]"):
        armm.ModelConfig.load(tmp_path / "config.json")


def test_rope_scaling_round_trips_and_bad_scalings_are_refused(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = armm.ModelConfig.from_name("llama-tiny", rope_scaling=scaling)
    config.save(tmp_path / "config.json")
    assert armm.ModelConfig.load(tmp_path / "config.json") == config and config.rope_scaling == scaling
    for bad, message in [({"rope_type": "yarn", "factor": 4.0}, r"rope_type in \('llama3',\)"),
                         ("llama3", "must be None or a dict"),
                         ({**scaling, "extra": 1}, "takes exactly the keys"),
                         ({**scaling, "factor": 0}, r"rope_scaling\['factor'\] must be a finite number > 0"),
                         ({**scaling, "factor": "8"}, r"rope_scaling\['factor'\]"),
                         ({**scaling, "high_freq_factor": 1.0}, "high_freq_factor > low_freq_factor")]:
        with pytest.raises(ValueError, match=message):
            armm.ModelConfig.from_name("llama-tiny", rope_scaling=bad)
    with pytest.raises(ValueError, match="rope_scaling scales RoPE, but position='learned'"):
        armm.ModelConfig.from_name("gpt2-tiny", rope_scaling=scaling)


@pytest.mark.parametrize("field, value", [("n_layer", 10**6), ("d_model", 10**9), ("vocab_size", 10**10),
                                          ("max_seq_len", 10**12), ("d_ff", 10**8)])
def test_absurd_sizes_are_refused_naming_the_field_and_the_limit(field, value):
    with pytest.raises(ValueError, match=rf"ModelConfig.{field} must be <= {armm.config.MAXIMA[field]} \(past any "
                                         rf"model built so far\), got {value}"):
        armm.ModelConfig(**{field: value})


def test_a_70b_llama_config_is_still_a_model():
    """The limits leave room for the largest open models: Llama 3.1 70B builds (on the meta device: no memory)."""
    config = armm.ModelConfig(vocab_size=128256, n_layer=80, n_head=64, n_kv_head=8, d_model=8192, d_ff=28672,
                              max_seq_len=131072, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                              tie_embeddings=False, rope_theta=500000.0)
    with torch.device("meta"):
        model = armm.Transformer(config)
    assert model.num_params(non_embedding=False) == pytest.approx(70.6e9, rel=0.01)
