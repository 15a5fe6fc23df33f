import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import hf_llmarch
from hf_llmarch import compat
from hf_llmarch.accounting import (
    cache_bytes_per_token,
    count_parameters,
    flops_per_token,
    format_summary,
    summarize,
)
from hf_llmarch.models.dense import LlmArchDenseConfig
from hf_llmarch.models.hybrid import LlmArchHybridConfig


TINY = dict(vocab_size=258, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


def _configs():
    yield "llama-tiny", hf_llmarch.load_preset("llama-tiny")
    yield "gpt2-tiny", hf_llmarch.load_preset("gpt2-tiny")
    yield "qknorm-bias-untied", LlmArchDenseConfig(
        **TINY, layer_pattern="(attn/mlp)x2", qk_norm=True, attention_bias=True, attention_out_bias=True,
        mlp_bias=True, tie_word_embeddings=False,
    )
    yield "moe", LlmArchDenseConfig(**TINY, **MOE, layer_pattern="(attn/moe)x2")
    yield "ffn-none-layernorm", LlmArchDenseConfig(**TINY, layer_pattern="attn/none attn/mlp", norm_type="layernorm")
    yield "hybrid", LlmArchHybridConfig(**TINY, **MOE, layer_pattern="(retention/moe attn/mlp)x2")
    yield "linear-attn", LlmArchHybridConfig(**TINY, layer_pattern="linear_attn/mlp attn/mlp")
    yield "linear-attn-identity", LlmArchHybridConfig(**TINY, layer_pattern="linear_attn/mlp", linear_attn_feature_map="identity")


CONFIGS = dict(_configs())


def _measured_breakdown(model, config) -> dict:
    """Parameter counts of a real model, grouped like count_parameters' breakdown."""
    counts = {"embeddings": 0, "lm_head": 0, "dense_ffn": 0, "moe_experts": 0, "router": 0, "norms": 0, "mixers": {}}
    for name, p in model.named_parameters():  # tied weights are yielded once
        parts = name.split(".")
        if parts[0] == "lm_head":
            key = "lm_head"
        elif parts[1] in ("embed_tokens", "embed_positions"):
            key = "embeddings"
        elif parts[1] == "norm" or "layernorm" in parts[3]:
            key = "norms"
        elif parts[3] == "mlp":
            is_moe = config.ffn_types[int(parts[2])] == "moe"
            key = {"experts": "moe_experts", "gate": "router"}[parts[4]] if is_moe else "dense_ffn"
        else:
            mixer = config.mixer_types[int(parts[2])]
            counts["mixers"][mixer] = counts["mixers"].get(mixer, 0) + p.numel()
            continue
        counts[key] += p.numel()
    return counts


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_matches_real_model(name):
    config = CONFIGS[name]
    model = AutoModelForCausalLM.from_config(config)
    counted = count_parameters(config)
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    measured = _measured_breakdown(model, config)
    for key, value in measured.items():
        assert counted[key] == value, key


def test_retention_hybrid_is_covered():
    assert "retention" in count_parameters(CONFIGS["hybrid"])["mixers"]


def test_lm_head_counts_only_when_untied():
    tied = count_parameters(CONFIGS["llama-tiny"])
    untied = count_parameters(hf_llmarch.load_preset("llama-tiny", tie_word_embeddings=False))
    assert tied["lm_head"] == 0
    assert untied["lm_head"] == 258 * 128
    assert untied["total"] - tied["total"] == 258 * 128


def test_shared_expert_counts_as_active_by_hand():
    config = hf_llmarch.load_preset("qwen2-moe-tiny")
    counted = count_parameters(config)
    per_layer = 3 * 128 * 128 + 128  # gate/up/down [128, 128] + the [1, 128] gate
    assert counted["moe_shared"] == 3 * per_layer
    routed_idle = 3 * (8 - 2) * 3 * 128 * 64  # 3 MoE layers, 6 idle experts each
    assert counted["active"] == counted["total"] - routed_idle
    with torch.device("meta"):
        assert counted["total"] == AutoModelForCausalLM.from_config(config).num_parameters()


def test_moe_active_parameters_by_hand():
    counted = count_parameters(CONFIGS["moe"])
    per_expert = 3 * 32 * 16  # gate_up [2*16, 32] + down [32, 16]
    assert counted["moe_experts"] == 2 * 4 * per_expert
    assert counted["moe_experts_active"] == 2 * 2 * per_expert
    assert counted["router"] == 2 * 32 * 4
    assert counted["active"] == counted["total"] - 2 * (4 - 2) * per_expert
    assert counted["active"] < counted["total"]
    dense = count_parameters(CONFIGS["llama-tiny"])
    assert dense["active"] == dense["total"]


@pytest.mark.parametrize(
    "preset,total",
    [
        ("llama3-8b", 8_030_261_248), ("mistral-7b", 7_241_732_096), ("qwen2-0.5b", 494_032_768), ("gpt2-small", 124_439_808),
        ("mixtral-8x7b", 46_702_792_704), ("qwen3-moe-30b-a3b", 30_532_122_624), ("qwen2-moe-a2.7b", 14_315_784_192),
    ],
)
def test_real_shapes_match_published_counts(preset, total):
    assert count_parameters(hf_llmarch.load_preset(preset))["total"] == total


@pytest.mark.parametrize(
    "preset,target,active",
    [
        ("mixtral-8x7b", "mixtral", 12_879_925_248),
        ("qwen3-moe-30b-a3b", "qwen3_moe", 3_353_032_704),
        ("qwen2-moe-a2.7b", "qwen2_moe", 2_689_173_504),
    ],
)
def test_moe_presets_match_the_native_model(preset, target, active):
    """Total equals the native transformers model's num_parameters() (built weightless on meta);
    active counts top-k of E experts per layer plus any shared expert (Mixtral's published 12.9B,
    Qwen3's 3.3B, Qwen1.5-MoE's 2.7B)."""
    from transformers.initialization import no_init_weights

    from hf_llmarch.convert import ADAPTERS

    config = hf_llmarch.load_preset(preset)
    with torch.device("meta"), no_init_weights():
        native = AutoModelForCausalLM.from_config(ADAPTERS[target].config_to_hf(config, target))
    counted = count_parameters(config)
    assert counted["total"] == native.num_parameters()
    assert counted["active"] == active


def _generate_with_cache(config, prompt_len: int, new_tokens: int, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    cache = DynamicCache(config=model.config)
    ids = torch.randint(0, 256, (1, prompt_len))
    out = model.generate(
        ids, **compat.cache_kwargs(cache), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        return_dict_in_generate=True, pad_token_id=0,
    )
    # The last sampled token is never fed back, so the cache has seen one token less.
    return compat.output_cache(out), out.sequences.shape[1] - 1


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _measured_cache_bytes(cache, config) -> dict[str, int]:
    by_type: dict[str, int] = {}
    for layer, layer_type in zip(cache.layers, config.layer_types):
        held = _tensor_bytes([getattr(layer, "keys", None), getattr(layer, "values", None)])
        held += _tensor_bytes(getattr(layer, "recurrent_states", {}).values())
        held += _tensor_bytes(getattr(layer, "conv_states", {}).values())
        by_type[layer_type] = by_type.get(layer_type, 0) + held
    return by_type


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_attention_cache_bytes_match_dynamic_cache(dtype):
    config = LlmArchDenseConfig(**TINY, layer_pattern="(attn/mlp)x2")
    cache, context = _generate_with_cache(config, prompt_len=5, new_tokens=4, dtype=dtype)
    predicted = cache_bytes_per_token(config, context, dtype=dtype)
    assert predicted["total_bytes"] == sum(_measured_cache_bytes(cache, config).values())
    assert predicted["bytes_per_token"] == 2 * 2 * 2 * 8 * dtype.itemsize  # layers * (k, v) * kv heads * head_dim
    assert predicted["constant_layers"] == []


def test_sliding_cache_bytes_match_dynamic_cache_beyond_window():
    config = LlmArchDenseConfig(**TINY, layer_pattern="attn/mlp swa/mlp", sliding_window=4)
    cache, context = _generate_with_cache(config, prompt_len=7, new_tokens=6)
    assert context > config.sliding_window
    predicted = cache_bytes_per_token(config, context, dtype=torch.float32)
    measured = _measured_cache_bytes(cache, config)
    for layer_type, held in measured.items():
        assert predicted["by_layer_type"][layer_type]["total_bytes"] == held, layer_type
    sliding = predicted["by_layer_type"]["sliding_attention"]
    assert sliding["total_bytes"] == (4 - 1) * 2 * 2 * 8 * 4  # window - 1 tokens
    assert sliding["constant_in_context"] and predicted["constant_layers"] == [1]
    assert predicted["bytes_per_token"] * context == pytest.approx(predicted["total_bytes"])


def test_sliding_cache_grows_until_the_window_fills():
    config = LlmArchDenseConfig(**TINY, layer_pattern="swa/mlp", sliding_window=8)
    totals = [cache_bytes_per_token(config, c)["total_bytes"] for c in (3, 6, 7, 8, 100)]
    assert totals[0] < totals[1] < totals[2] == totals[3] == totals[4]
    assert cache_bytes_per_token(config, 3)["constant_layers"] == []


def test_retention_cache_is_constant_and_matches_dynamic_cache():
    config = LlmArchHybridConfig(**TINY, **MOE, layer_pattern="retention/moe attn/mlp")
    measured = []
    for new_tokens in (2, 6):
        cache, context = _generate_with_cache(config, prompt_len=5, new_tokens=new_tokens, dtype=torch.bfloat16)
        predicted = cache_bytes_per_token(config, context, dtype=torch.bfloat16)
        held = _measured_cache_bytes(cache, config)
        assert predicted["total_bytes"] == sum(held.values())
        assert predicted["by_layer_type"]["linear_attention"]["total_bytes"] == held["linear_attention"]
        assert predicted["constant_layers"] == [0]
        measured.append(held["linear_attention"])
    heads, dk = 4, 8
    assert measured[0] == measured[1] == heads * dk * (2 * dk) * 4  # fp32 state [H, Dk, Dv]


@pytest.mark.parametrize("pattern", ["par(attn,mamba2)/mlp attn/mlp", "par(swa,mamba2)/mlp"])
def test_parallel_layer_cache_is_keys_values_and_a_constant_state(pattern):
    """A par() layer holds its attention's keys and values (growing, or up to the window) and the
    Mamba-2 states (constant), all in one cache layer; the figure equals what the cache holds."""
    config = hf_llmarch.load_preset("falcon-h1-tiny", layer_pattern=pattern, sliding_window=4, parallel_out_multipliers=None)
    for new_tokens in (2, 6):
        cache, context = _generate_with_cache(config, prompt_len=5, new_tokens=new_tokens, dtype=torch.bfloat16)
        predicted = cache_bytes_per_token(config, context, dtype=torch.bfloat16)
        held = _measured_cache_bytes(cache, config)
        assert predicted["total_bytes"] == sum(held.values())
        for layer_type, entry in predicted["by_layer_type"].items():
            assert entry["total_bytes"] == held[layer_type], layer_type
    sliding = "swa" in pattern
    assert predicted["constant_layers"] == ([0] if sliding else [])


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny", "s4d-tiny", "linear-attn-tiny"])
def test_state_space_cache_is_constant_and_matches_dynamic_cache(preset):
    """bf16 model: the SSM state is fp32, the conv history bf16; neither grows with the context."""
    config = hf_llmarch.load_preset(preset, layer_pattern=hf_llmarch.load_preset(preset).mixer_types[0] + " attn/none")
    measured = []
    for new_tokens in (2, 6):
        cache, context = _generate_with_cache(config, prompt_len=5, new_tokens=new_tokens, dtype=torch.bfloat16)
        predicted = cache_bytes_per_token(config, context, dtype=torch.bfloat16)
        held = _measured_cache_bytes(cache, config)
        assert predicted["by_layer_type"]["linear_attention"]["total_bytes"] == held["linear_attention"]
        assert predicted["total_bytes"] == sum(held.values()) and predicted["constant_layers"] == [0]
        measured.append(held["linear_attention"])
    assert measured[0] == measured[1]


@pytest.mark.parametrize(
    "preset, target, total, active",
    [
        ("mamba-130m", "mamba", 129_135_360, 129_135_360),
        ("mamba2-130m", "mamba2", 128_989_632, 128_989_632),
        ("jamba-v0.1", "jamba", 51_570_323_328, 12_110_311_296),  # published: 52B total, 12B active
        ("granite-4.0-h-tiny", "granitemoehybrid", 6_939_037_248, 1_465_470_528),  # published: 7B total
        ("falcon-h1-0.5b", "falcon_h1", 521_411_104, 521_411_104),  # published: 0.52B
        ("deepseek-v3", "deepseek_v3", 671_026_404_352, 37_552_282_624),  # published: 671B total, 37B active
        ("deepseek-v2-lite", "deepseek_v2", 15_706_484_224, 2_661_150_208),  # published: 15.7B total, 2.4B active
        ("deepseek-v3.2", "deepseek_v32", 671_877_929_216, 38_403_807_488),  # V3's plus the indexers
    ],
)
def test_state_space_presets_match_the_native_model(preset, target, total, active):
    from transformers.initialization import no_init_weights

    from hf_llmarch.convert import ADAPTERS

    config = hf_llmarch.load_preset(preset)
    with torch.device("meta"), no_init_weights():
        native = AutoModelForCausalLM.from_config(ADAPTERS[target].config_to_hf(config, target))
        native.tie_weights()  # no_init_weights also skips tying
    counted = count_parameters(config)
    assert counted["total"] == native.num_parameters() == total
    assert counted["active"] == active


def test_deepseek_v3_caches_the_latent_not_the_heads():
    """layers.md §2d: 61 layers x (512 + 64) x 2 bytes = 70,272 B/token in bf16, against 4,997,120 for the
    same heads caching full keys and values (61 x 128 x (192 + 128) x 2)."""
    cache = cache_bytes_per_token(hf_llmarch.load_preset("deepseek-v3"), 4096, dtype=torch.bfloat16)
    assert cache["bytes_per_token"] == 70_272 == 61 * (512 + 64) * 2
    assert cache["mha_equivalent_bytes_per_token"] == 4_997_120 == 61 * 128 * (192 + 128) * 2
    sparse = cache_bytes_per_token(hf_llmarch.load_preset("deepseek-v3.2"), 4096, dtype=torch.bfloat16)
    assert sparse["bytes_per_token"] == 85_888 == 61 * (512 + 64 + 128) * 2  # and the indexer's key


def test_attention_flops_grow_linearly_with_context():
    config = LlmArchDenseConfig(**TINY, layer_pattern="(attn/mlp)x2")
    f = [flops_per_token(config, c)["forward"] for c in (100, 200, 300)]
    assert f[1] - f[0] == f[2] - f[1] == 4 * 2 * 100 * 4 * 8  # 4 * layers * dctx * heads * head_dim


def test_sliding_flops_stop_growing_beyond_the_window():
    config = LlmArchDenseConfig(**TINY, layer_pattern="swa/mlp", sliding_window=16)
    f = {c: flops_per_token(config, c)["forward"] for c in (8, 16, 17, 1000)}
    assert f[8] < f[16] == f[17] == f[1000]


def test_retention_flops_are_constant_in_context():
    config = LlmArchHybridConfig(**TINY, layer_pattern="(retention/mlp)x2")
    short, long = flops_per_token(config, 10), flops_per_token(config, 100_000)
    assert short == {**long, "context": 10}
    assert short["attention"] == 0
    assert short["recurrent_state"] == 2 * 4 * 4 * 8 * 16  # layers * 4 * H * Dk * Dv


def test_flops_spot_value_by_hand():
    config = LlmArchDenseConfig(
        vocab_size=10, hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
        layer_pattern="attn/mlp", attention_bias=True, tie_word_embeddings=True,
    )
    # q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192; SwiGLU 3 * 8 * 16 = 384; LM head 10 * 8 = 80 (tied, still a matmul).
    flops = flops_per_token(config, 5)
    assert flops["matmul_params"] == 192 + 384 + 80
    assert flops["attention"] == 4 * 5 * 2 * 4
    assert flops["forward"] == 2 * 656 + 160
    assert flops["training"] == 3 * flops["forward"]


def test_bad_context_and_unknown_mixer_raise():
    config = CONFIGS["llama-tiny"]
    with pytest.raises(ValueError, match="context"):
        flops_per_token(config, 0)
    with pytest.raises(ValueError, match="context"):
        cache_bytes_per_token(config, 0)
    fake = SimpleNamespace(**config.to_dict())
    fake.mixer_types = ["nonexistent"] * config.num_hidden_layers
    with pytest.raises(NotImplementedError, match="nonexistent"):
        count_parameters(fake)


def test_summary_is_json_and_readable():
    summary = summarize(hf_llmarch.load_preset("llama3-8b"), context=8192)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["cache"]["bytes_per_token"] == 32 * 2 * 8 * 128 * 2  # 128 KiB in bf16
    text = format_summary(summary)
    assert "8.03B" in text and "(attn/mlp)x32" in text and "128 KiB" in text


def test_hybrid_1b_preset_reports_constant_retention_cache():
    from hf_llmarch import load_preset

    config = load_preset("hybrid-1b")
    params = count_parameters(config)
    assert 1.0e9 < params["total"] < 1.2e9 and params["active"] < params["total"]
    short, long = (cache_bytes_per_token(config, context=c) for c in (256, 4096))
    retention = [s["by_layer_type"]["linear_attention"] for s in (short, long)]
    assert retention[0]["constant_in_context"] and retention[0]["total_bytes"] == retention[1]["total_bytes"]
    assert long["by_layer_type"]["full_attention"]["total_bytes"] == 16 * short["by_layer_type"]["full_attention"]["total_bytes"]


@pytest.mark.parametrize(
    "router", [("softmax_topk", {}), ("noisy_topk", {}), ("hierarchical", dict(n_group=2, topk_group=1)),
               ("switch", dict(num_experts_per_tok=1)), ("deepseek", dict(n_group=2, topk_group=1))],
    ids=lambda r: r[0],
)
def test_every_router_counts_its_own_parameters(router):
    """Noisy top-k adds a noise gate [E, H], hierarchical a group gate [G, H]; DeepSeek's bias is a buffer."""
    router_type, fields = router
    config = hf_llmarch.load_preset("mixtral-tiny", router_type=router_type, **fields)
    assert count_parameters(config)["total"] == AutoModelForCausalLM.from_config(config).num_parameters()


@pytest.mark.parametrize("depth", [1, 2])
def test_mtp_modules_count_in_total_not_active(depth):
    from conftest import tiny_model

    plain, with_mtp = tiny_model("deepseek"), tiny_model("deepseek", num_nextn_predict_layers=depth)
    counted, base = count_parameters(with_mtp.config), count_parameters(plain.config)
    assert counted["total"] == with_mtp.num_parameters() == base["total"] + counted["mtp"]
    assert counted["active"] == base["active"] and counted["mtp"] > 0


# Each encoder preset's published config.json, in the native config class's field names.
PUBLISHED_ENCODERS = {
    "bert-base": ("BertConfig", dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
    )),
    "roberta-base": ("RobertaConfig", dict(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
        bos_token_id=0, eos_token_id=2,
    )),
    "albert-base-v2": ("AlbertConfig", dict(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0, bos_token_id=2, eos_token_id=3, num_hidden_groups=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )),
    "electra-small": ("ElectraConfig", dict(
        vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
        intermediate_size=1024, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
        pad_token_id=0,
    )),
}
# Native field -> ours, for the fields a preset must copy from its checkpoint.
NATIVE_FIELD_NAMES = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "intermediate_size": "intermediate_size", "hidden_act": "hidden_act",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "norm_eps", "pad_token_id": "pad_token_id", "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id", "embedding_size": "embedding_size", "num_hidden_groups": "num_layer_groups",
    "hidden_dropout_prob": "hidden_dropout", "attention_probs_dropout_prob": "attention_dropout",
}


def _on_meta(build):
    """A weightless model, tied as a loaded one is (no_init_weights also skips tying)."""
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        model = build()
    model.tie_weights()
    return model


def _unique_numel(model) -> int:
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=True))  # tied weights once


def _native_config(preset: str):
    import transformers

    config_cls, fields = PUBLISHED_ENCODERS[preset]
    return getattr(transformers, config_cls)(**fields)


@pytest.mark.parametrize("preset", list(PUBLISHED_ENCODERS))
def test_encoder_presets_match_the_published_configs(preset):
    ours, (_, native) = hf_llmarch.load_preset(preset), PUBLISHED_ENCODERS[preset]
    for native_name, value in native.items():
        assert getattr(ours, NATIVE_FIELD_NAMES[native_name]) == value, native_name


@pytest.mark.parametrize(
    "preset,native_cls,total",
    [
        ("bert-base", "BertForPreTraining", 110_106_428),  # published: 110M
        ("roberta-base", "RobertaForMaskedLM", 124_697_433),  # published: 125M; no NSP, so no pooler either
        ("albert-base-v2", "AlbertForPreTraining", 11_813_810),  # published: 12M (one shared block)
        # AutoModelForPreTraining gives an ELECTRA-shaped config the MLM head (ElectraForMaskedLM's
        # generator head on the discriminator's stack); the discriminator is checked below.
        ("electra-small", "ElectraForMaskedLM", 13_546_682),
    ],
)
def test_encoder_presets_match_our_model_and_the_native_one(preset, native_cls, total):
    import transformers
    from transformers import AutoModelForPreTraining

    config = hf_llmarch.load_preset(preset)
    ours = _on_meta(lambda: AutoModelForPreTraining.from_config(config))
    native = _on_meta(lambda: getattr(transformers, native_cls)(_native_config(preset)))
    counted = count_parameters(config)
    assert counted["total"] == counted["active"] == _unique_numel(ours) == _unique_numel(native) == total
    assert counted["counted_model"].startswith("AutoModelForPreTraining")


def test_electra_discriminator_swaps_the_mlm_head_for_the_token_scorer():
    """ELECTRA's pre-training model in transformers is the discriminator: the same encoder with a
    dense H -> H and a 1-logit projection per token instead of the MLM head and vocab bias."""
    from transformers import ElectraForPreTraining

    from hf_llmarch.models import LlmArchEncoderForReplacedTokenDetection

    config = hf_llmarch.load_preset("electra-small")
    counted, h = count_parameters(config), config.hidden_size
    discriminator = counted["total"] - counted["heads"]["mlm_head"] - counted["lm_head"] + (h * h + h) + (h + 1)
    ours = _on_meta(lambda: LlmArchEncoderForReplacedTokenDetection(config))
    native = _on_meta(lambda: ElectraForPreTraining(_native_config("electra-small")))
    assert discriminator == _unique_numel(ours) == _unique_numel(native) == 13_549_057  # published: 14M


@pytest.mark.parametrize("preset", ["bert-tiny", "roberta-tiny", "albert-tiny", "electra-tiny"])
def test_tiny_encoder_presets_count_by_module(preset):
    """Real (CPU) models: the total, and each head's figure against the module of that name."""
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    config = hf_llmarch.load_preset(preset)
    model = AutoModelForPreTraining.from_config(config)
    counted = count_parameters(config)
    assert counted["total"] == model.num_parameters()
    modules = {
        "pooler": getattr(model.model, "pooler", None),
        "mlm_head": model.mlm_head,
        "pair_classifier": getattr(model, "pair_classifier", None),
    }
    for name, module in modules.items():
        assert counted["heads"][name] == (0 if module is None else sum(p.numel() for p in module.parameters())), name
    embeddings = (p.numel() for n, p in model.model.named_parameters() if n.startswith("embed_") and "norm" not in n)
    assert counted["embeddings"] == sum(embeddings)  # tables E wide, and embed_proj when E != hidden
    pair_parts = counted["heads"]["pooler"] + counted["heads"]["pair_classifier"]
    assert AutoModelForMaskedLM.from_config(config).num_parameters() == counted["total"] - pair_parts


def test_shared_layers_count_once_in_parameters_and_every_time_in_flops():
    """ALBERT stores one block but runs it 12 times: FLOPs count every run, and the E-wide input
    projection, the MLM transform and the vocab x E output projection."""
    config = hf_llmarch.load_preset("albert-base-v2")
    h, inner, e, v = 768, 3072, 128, 30000
    block = 4 * h * h + 2 * h * inner
    assert count_parameters(config)["mixers"]["attn"] == 4 * h * h + 4 * h  # one stored block, with biases
    assert flops_per_token(config, 16)["matmul_params"] == 12 * block + e * h + h * e + v * e


def test_decoder_with_encoder_style_embeddings_matches_real_model():
    """The topology fields on a causal decoder: post-norm (no final norm), token types, an offset
    learned position table, E-wide embeddings lifted by embed_proj and an untied LM head."""
    config = LlmArchDenseConfig(
        **TINY, layer_pattern="(attn/mlp)x2", norm_placement="post", norm_type="layernorm", type_vocab_size=3,
        embedding_size=16, embedding_norm=True, position_embedding_type="learned", max_position_embeddings=40,
        position_offset=2, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    assert not hasattr(model.model, "norm")
    assert count_parameters(config)["total"] == model.num_parameters()


def test_encoders_hold_no_cache():
    cache = cache_bytes_per_token(hf_llmarch.load_preset("bert-base"), 512)
    assert cache["cached"] is False and cache["total_bytes"] == cache["bytes_per_token"] == 0
    assert cache["by_layer_type"] == {} and cache_bytes_per_token(CONFIGS["llama-tiny"], 8)["cached"]


def test_info_bert_base_prints_the_count_and_no_cache(capsys):
    from hf_llmarch.cli import main

    assert main(["info", "bert-base"]) == 0
    out = capsys.readouterr().out
    assert "110,106,428" in out and "AutoModelForPreTraining" in out and "no cache (encoder)" in out
    assert main(["info", "albert-base-v2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["total"] == 11_813_810 and summary["cache"]["bytes_per_token"] == 0


# --- encoder-decoders (llmarch_seq2seq) ---------------------------------------------------------------

# The published checkpoints' config.json values (google/t5-v1_1-base, facebook/bart-base).
PUBLISHED_SEQ2SEQ = {
    "t5-v1_1-base": ("T5Config", dict(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )),
    "bart-base": ("BartConfig", dict(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, activation_function="gelu",
        max_position_embeddings=1024, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, scale_embedding=False,
        init_std=0.02, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )),
}
SEQ2SEQ_TINY = ["t5-tiny", "bart-tiny", "transformer-tiny", "redllm-tiny"]


def _native_seq2seq_config(preset: str):
    import transformers

    config_cls, fields = PUBLISHED_SEQ2SEQ[preset]
    return getattr(transformers, config_cls)(**fields)


@pytest.mark.parametrize("preset", list(PUBLISHED_SEQ2SEQ))
def test_seq2seq_presets_are_the_converters_mapping_of_the_published_configs(preset):
    """Each preset field is what convert/t5_bart.py makes of the checkpoint's config, except two T5
    fields: initializer_factor (1.0, a multiplier of T5's own fan-in init), which a from-scratch
    preset leaves at our std default; and tie_word_embeddings, which transformers 5.24's T5Config
    forces to True (keeping the v1.0 output scale apart as scale_decoder_outputs) although the v1.1
    checkpoint stores its own lm_head: the preset keeps v1.1's untied head."""
    from hf_llmarch.convert.t5_bart import config_from_hf

    ours, native = hf_llmarch.load_preset(preset), _native_seq2seq_config(preset)
    skipped = {"initializer_range", "tie_word_embeddings"} if preset.startswith("t5") else set()
    for field, value in config_from_hf(native).items():
        if field not in skipped:
            assert getattr(ours, field) == value, field
    if preset.startswith("t5"):
        assert native.tie_word_embeddings and not native.scale_decoder_outputs and not ours.tie_word_embeddings


@pytest.mark.parametrize(
    "preset,native_cls,total,native_total",
    [
        # Ours: 247,577,856, the published checkpoint's ~248M: untied lm_head (v1.1 does not tie).
        # transformers 5.24's T5ForConditionalGeneration always ties lm_head to `shared` (T5Config
        # forces tie_word_embeddings=True; v1.0's output scale is `scale_decoder_outputs`), so the
        # native model built from this config holds one vocab x d_model matrix less.
        ("t5-v1_1-base", "T5ForConditionalGeneration", 247_577_856, 247_577_856 - 32128 * 768),
        # Ours: 139,470,681; native: 139,420,416 (published ~139M/140M). BART's `final_logits_bias`
        # is a buffer there, our lm_head.bias a parameter: the difference is that vocab-sized bias.
        ("bart-base", "BartForConditionalGeneration", 139_470_681, 139_470_681 - 50265),
    ],
)
def test_seq2seq_presets_match_our_model_and_the_native_one(preset, native_cls, total, native_total):
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    config = hf_llmarch.load_preset(preset)
    ours = _on_meta(lambda: AutoModelForSeq2SeqLM.from_config(config))
    native = _on_meta(lambda: getattr(transformers, native_cls)(_native_seq2seq_config(preset)))
    counted = count_parameters(config)
    print(f"{preset}: ours {counted['total']:,}, native {native_cls} {_unique_numel(native):,}")
    assert counted["total"] == counted["active"] == _unique_numel(ours) == total
    assert _unique_numel(native) == native_total
    assert counted["counted_model"] == "AutoModelForSeq2SeqLM (encoder + decoder)"
    if preset == "t5-v1_1-base":
        assert native.lm_head.weight is native.shared.weight  # tied whatever the config says
        assert counted["lm_head"] == 32128 * 768 and counted["total"] - counted["lm_head"] == native_total
    else:
        native_bias = dict(native.named_buffers())["final_logits_bias"]
        assert counted["lm_head"] == native_bias.numel() == 50265  # tied weight: only the bias is the head's own


@pytest.mark.parametrize(
    "preset,total",
    [
        ("transformer-base", 63_082_496),  # the paper: 65M (Table 3)
        ("redllm-150m", 146_818_048),  # the paper: ~150M
        ("redllm-1b", 1_124_149_248),  # the paper: ~1B
    ],
)
def test_seq2seq_presets_count_exactly(preset, total):
    from transformers import AutoModelForSeq2SeqLM

    config = hf_llmarch.load_preset(preset)
    model = _on_meta(lambda: AutoModelForSeq2SeqLM.from_config(config))
    counted = count_parameters(config)
    print(f"{preset}: {counted['total']:,}")
    assert counted["total"] == _unique_numel(model) == total
    # The two stacks, the token table they share and the output layer's own parameters add up.
    assert sum(counted["stacks"].values()) + config.vocab_size * config.hidden_size + counted["lm_head"] == total


def test_redllm_preset_shapes_follow_the_paper_table():
    """RedLLM's size table (d, d_ffn, h, d_h, encoder/decoder layers) and its 32768-token vocabulary."""
    for preset, (d, ffn, heads, layers) in {"redllm-150m": (1024, 4096, 8, 3), "redllm-1b": (2048, 8192, 16, 7)}.items():
        config = hf_llmarch.load_preset(preset)
        encoder = config.stack_config(encoder=True)
        assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.head_dim) == (d, ffn, heads, 128)
        assert len(config.mixer_types) == len(encoder.mixer_types) == layers and config.vocab_size == 32768
        assert config.continuous_positions and config.qkv_norm and config.attention_output_norm and config.tie_word_embeddings


@pytest.mark.parametrize("preset", SEQ2SEQ_TINY)
def test_tiny_seq2seq_presets_count_by_module(preset):
    """Real (CPU) models: the total, each stack, the cross-attention and the output layer."""
    from transformers import AutoModelForSeq2SeqLM

    config = hf_llmarch.load_preset(preset)
    model = AutoModelForSeq2SeqLM.from_config(config)
    counted = count_parameters(config)
    assert counted["total"] == model.num_parameters() == sum(p.numel() for p in model.parameters())

    def numel(module, skip=("embed_tokens",)):
        return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))

    assert counted["stacks"] == {"encoder": numel(model.model.encoder), "decoder": numel(model.model.decoder)}
    cross = sum(p.numel() for n, p in model.named_parameters() if ".cross_attn." in n)
    assert counted["mixers"]["cross_attn"] == cross > 0
    assert counted["lm_head"] == numel(model.lm_head) - (model.lm_head.weight.numel() if config.tie_word_embeddings else 0)


@pytest.mark.parametrize("preset", SEQ2SEQ_TINY)
def test_seq2seq_cache_bytes_match_the_encoder_decoder_cache(preset):
    """Self-attention K/V per generated token, cross-attention K/V per encoder token, as
    transformers' EncoderDecoderCache holds them after generate()."""
    from transformers import AutoModelForSeq2SeqLM

    config = hf_llmarch.load_preset(preset)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    source = 7
    out = model.generate(
        torch.randint(0, 256, (1, source)), max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True
    )
    cache, context = compat.output_cache(out), out.sequences.shape[1] - 1  # the last token is never fed back
    predicted = cache_bytes_per_token(config, context, dtype=torch.float32, encoder_context=source)

    def held(layers):
        return sum(_tensor_bytes([layer.keys, layer.values]) for layer in layers)

    assert predicted["total_bytes"] == held(cache.self_attention_cache.layers)
    assert predicted["cross_attention"]["total_bytes"] == held(cache.cross_attention_cache.layers)
    per_token = 2 * 2 * 4 * 16 * 4  # layers * (k, v) * heads * head_dim * fp32 bytes
    assert predicted["bytes_per_token"] == predicted["cross_attention"]["bytes_per_encoder_token"] == per_token
    assert predicted["sequence_total_bytes"] == per_token * (context + source)


def test_seq2seq_flops_split_decoder_and_encoder_tokens_by_hand():
    """transformer-base: a decoder token runs self-attention, cross q/o, the FFN and the (tied)
    output projection; the cross k/v projections run once per encoder token."""
    config = hf_llmarch.load_preset("transformer-base")
    h, inner, vocab, layers, ctx, src = 512, 2048, 37000, 6, 100, 30
    flops = flops_per_token(config, ctx, encoder_context=src)
    assert flops["matmul_params"] == layers * (4 * h * h + 2 * h * h + 2 * h * inner) + vocab * h
    assert flops["attention"] == layers * (ctx + src) * 4 * h and flops["cross_attention"] == layers * src * 4 * h
    encoder = flops["encoder"]
    assert encoder["matmul_params"] == layers * (4 * h * h + 2 * h * inner) + layers * 2 * h * h
    assert encoder["attention"] == layers * src * 4 * h and encoder["training"] == 3 * encoder["forward"]
    assert flops_per_token(config, ctx)["encoder_context"] == ctx  # default: as many encoder tokens as decoder ones


def test_info_redllm_150m_shows_the_cross_attention_cache(capsys):
    from hf_llmarch.cli import main

    assert main(["info", "redllm-150m"]) == 0
    out = capsys.readouterr().out
    assert "146,818,048" in out and "AutoModelForSeq2SeqLM (encoder + decoder)" in out
    assert "self KV per decoder token" in out and "cross KV per encoder token" in out
    assert "mixer cross_attn" in out and "FLOPs/encoder token" in out
    assert main(["info", "redllm-150m", "--json", "--context", "1024"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cross = summary["cache"]["cross_attention"]
    assert cross["bytes_per_encoder_token"] == 3 * 2 * 8 * 128 * 2  # layers * (k, v) * heads * head_dim * bf16
    assert summary["encoder_layer_types"] == {"full_attention": 3} and summary["encoder_context"] == 1024
