import json

import pytest

import armm


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
