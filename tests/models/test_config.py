"""Config validation: every bad setting raises a ValueError that names the field and the fix."""

import pytest
import torch
from transformers import AutoConfig

import hf_llmarch
from hf_llmarch.models.dense import LlmArchDenseConfig
from hf_llmarch.models.hybrid import LlmArchHybridConfig
from hf_llmarch.pattern import compress_pattern, expand_pattern

BAD = [
    (dict(hidden_size=100, num_attention_heads=8), "num_attention_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads"),
    (dict(layer_pattern="(attn/mlp)x3", num_hidden_layers=4), "num_hidden_layers"),
    (dict(layer_pattern="attn/mlp mamba9/mlp"), "mamba9"),
    (dict(layer_pattern="attn/ffx"), "ffn_types"),
    (dict(rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}), "rope_type"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}), "factor"),
    (dict(layer_pattern="swa/mlp attn/mlp"), "sliding_window"),
    (dict(sliding_window=0, layer_pattern="swa"), "sliding_window"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(hidden_act="swoosh"), "hidden_act"),
    (dict(position_embedding_type="alibi"), "position_embedding_type"),
    (dict(layer_pattern="(attn/moe)x2", num_experts=4, num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(layer_pattern="retention/mlp", hidden_size=96, retention_num_heads=5, num_attention_heads=4), "retention_num_heads"),
    (dict(pad_token_id=40000, vocab_size=32000), "pad_token_id"),
    (dict(moe_impl="cuda-magic"), "moe_impl"),
    (dict(retention_mode="fast"), "retention_mode"),
    (dict(layer_pattern="(attn/mlp x2"), "layer_pattern"),
    (dict(layer_pattern="attn", mixer_types=["retention"]), "mixer_types"),
    (dict(layer_pattern="attn", layer_types=["linear_attention"]), "layer_types"),
    (dict(vocab_size=0), "vocab_size"),
]


@pytest.mark.parametrize("fields,named", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_config_names_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        LlmArchHybridConfig(**fields)


FIXES = [
    (dict(hidden_size=100, num_attention_heads=8), "use num_attention_heads in [1, 2, 4, 5, 10]"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "valid num_key_value_heads: [1, 2, 4, 8]"),
    (dict(layer_pattern="(attn/moe)x2", num_experts=4, num_experts_per_tok=5), "to at most 4"),
    (dict(layer_pattern="attn/mlp mamba9/mlp"), "valid mixers: ["),
    (dict(layer_pattern="swa/mlp attn/mlp"), "set sliding_window"),
    (dict(pad_token_id=40000, vocab_size=32000), "or None for no pad token"),
    (dict(hidden_dropout=1.0), "hidden_dropout=1.0 must lie in [0, 1)"),
]


@pytest.mark.parametrize("fields,fix", FIXES)
def test_bad_config_says_the_fix(fields, fix):
    with pytest.raises(ValueError) as err:
        LlmArchHybridConfig(**fields)
    assert fix in str(err.value)


def test_pattern_grammar_round_trip():
    layers = expand_pattern("(retention/moe attn)x2 swa/none")
    assert layers == [("retention", "moe"), ("attn", "mlp"), ("retention", "moe"), ("attn", "mlp"), ("swa", "none")]
    assert expand_pattern("((attn/mlp)x2 retention)x2") == [("attn", "mlp")] * 2 + [("retention", "mlp")] + [("attn", "mlp")] * 2 + [("retention", "mlp")]
    assert compress_pattern(["attn", "retention"] * 3, ["mlp", "moe"] * 3) == "(attn/mlp retention/moe)x3"


def test_pattern_derives_transformers_layer_types_and_round_trips(tmp_path):
    config = LlmArchHybridConfig(layer_pattern="(retention/moe attn/mlp swa/mlp)x2", sliding_window=8, hidden_size=64, num_attention_heads=4)
    assert config.num_hidden_layers == 6
    assert config.layer_types[:3] == ["linear_attention", "full_attention", "sliding_attention"]
    assert config.ffn_types[:3] == ["moe", "mlp", "mlp"]
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert type(again) is LlmArchHybridConfig
    assert (again.mixer_types, again.ffn_types, again.layer_types) == (config.mixer_types, config.ffn_types, config.layer_types)


def test_defaults_and_presets():
    assert LlmArchDenseConfig().mixer_types == ["attn", "attn"]
    assert LlmArchHybridConfig(num_hidden_layers=4).layer_pattern == "(retention/moe attn/mlp)x2"
    presets = hf_llmarch.list_presets()
    assert {"llama-tiny", "gpt2-tiny", "hybrid-tiny", "llama3-8b"} <= set(presets)
    assert hf_llmarch.load_preset("llama3-8b").num_key_value_heads == 8
    assert hf_llmarch.load_preset("llama-tiny", hidden_size=256).hidden_size == 256
    with pytest.raises(ValueError, match="unknown preset"):
        hf_llmarch.load_preset("llama-99b")


def test_legacy_rope_kwargs_are_standardised():
    config = LlmArchDenseConfig(rope_theta=500000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert config.rope_parameters["rope_type"] == "linear"
    assert config.rope_parameters["rope_theta"] == 500000.0


def test_register_a_new_mixer_and_use_it_in_a_pattern():
    """A new mixer is one class plus a registration; the backbone needs no change."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from hf_llmarch.mixers import MIXER_CLASSES, MIXER_LAYER_TYPES, register_mixer

    class ShiftMixer(nn.Module):
        block_attr = "shift"

        def __init__(self, config, layer_idx):
            super().__init__()
            self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

        def forward(self, hidden_states, **kwargs):  # token t sees token t-1: causal, stateless
            return self.o_proj(nn.functional.pad(hidden_states, (0, 0, 1, 0))[:, :-1]), None

    register_mixer("shift", ShiftMixer, "full_attention")
    try:
        config = LlmArchDenseConfig(layer_pattern="shift/mlp attn/mlp", hidden_size=32, num_attention_heads=4, vocab_size=64)
        model = AutoModelForCausalLM.from_config(config)
        assert isinstance(model.model.layers[0].shift, ShiftMixer)
        assert model(torch.randint(0, 64, (1, 5))).logits.shape == (1, 5, 64)
    finally:
        MIXER_CLASSES.pop("shift"), MIXER_LAYER_TYPES.pop("shift")


def test_preset_override_typo_is_refused():
    with pytest.raises(ValueError, match="hiden_size.*did you mean 'hidden_size'"):
        hf_llmarch.load_preset("llama-tiny", hiden_size=256)
    assert hf_llmarch.load_preset("llama-tiny", num_labels=3).num_labels == 3


@pytest.mark.parametrize("pattern", ["(attn/mlp)x2", "(retention/moe)x2", "attn/moe swa/none", "retention/mlp attn/moe"])
@pytest.mark.parametrize("gated", [True, False])
def test_tensor_parallel_plan_names_only_parameters_the_model_has(pattern, gated):
    """transformers' common test_tp_plan_matches_params: a plan entry that matches no parameter
    (e.g. retention entries in a pure-attention model) is an error; every sharded projection is covered."""
    import re

    from transformers import AutoModel

    config = hf_llmarch.load_preset("hybrid-tiny", layer_pattern=pattern, mlp_gated=gated, sliding_window=4, hidden_size=32, num_attention_heads=2, num_key_value_heads=2)
    names = [n.removesuffix(".weight") for n, _ in AutoModel.from_config(config).named_parameters() if n.endswith(".weight")]
    plan = config.base_model_tp_plan
    for entry in plan:
        regex = re.compile(entry.replace(".", r"\.").replace("*", r"\d+") + "$")
        assert any(regex.match(n) for n in names), f"tp plan entry {entry!r} matches no parameter of {pattern}"
    projections = [n for n in names if re.search(r"\.(self_attn|retention|mlp)\.\w+_proj$", n)]
    covered = [n for n in projections if any(re.match(e.replace(".", r"\.").replace("*", r"\d+") + "$", n) for e in plan)]
    assert covered == projections


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("embedding_multiplier", 0.0, "embedding_multiplier=0.0 must be > 0"),
        ("residual_multiplier", -1.0, "residual_multiplier=-1.0 must be > 0"),
        ("logits_scaling", 0, "logits_scaling=0 must be > 0"),
        ("attention_multiplier", 0.0, "attention_multiplier=0.0 must be > 0, or None"),
    ],
)
def test_bad_scalings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        LlmArchDenseConfig(hidden_size=64, num_attention_heads=4, **{field: value})


def test_logits_scaling_divides_the_logits_and_neutral_values_change_nothing():
    """The muP scalings (Granite) are exact no-ops at their defaults; their effect against transformers'
    Granite is checked in tests/convert (granitemoehybrid parity with all four set)."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 250, (1, 7))
    models = []
    for scaling in (1.0, 2.0):
        torch.manual_seed(0)
        config = LlmArchDenseConfig(vocab_size=256, hidden_size=64, num_attention_heads=4, logits_scaling=scaling)
        models.append(AutoModelForCausalLM.from_config(config).eval())
    with torch.no_grad():
        torch.testing.assert_close(models[1](ids).logits * 2, models[0](ids).logits)
    assert models[0].model.layers[0].self_attn.scaling == 16**-0.5
