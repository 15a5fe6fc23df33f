"""Multi-head latent attention: absorbed decode equals the up-projected path, the cache holds only
the latent and the RoPE key (exactly the analytic bytes), decode never expands the cache, and bad
settings name their field. The family contract runs on the `deepseek` family elsewhere."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch.accounting import cache_bytes_per_token
from hf_llmarch.models.deepseek import LlmArchDeepseekConfig
from hf_llmarch.ops.mla import mla_latent_attention_naive


def _pair(**overrides):
    """The same weights with the absorbed and the expanded decode."""
    return tiny_model("deepseek", mla_mode="absorb", **overrides), tiny_model("deepseek", mla_mode="expand", **overrides)


def _left_padded():
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_absorbed_decode_equals_the_up_projected_path(dtype, tol):
    """Prefill a left-padded batch, then decode three tokens one at a time: logits agree at every step."""
    absorbed, expanded = (m.to(dtype) for m in _pair())
    ids, mask = _left_padded()
    steps = torch.randint(3, 250, (2, 3), generator=torch.Generator().manual_seed(1))
    logits = []
    for model in (absorbed, expanded):
        cache, seen, out = DynamicCache(config=model.config), mask, []
        with torch.no_grad():
            out.append(model(ids, attention_mask=seen, past_key_values=cache, use_cache=True).logits[:, -1])
            for t in range(3):
                seen = torch.cat([seen, torch.ones(2, 1, dtype=seen.dtype)], 1)
                position = (seen.sum(-1, keepdim=True) - 1)
                step = model(steps[:, t : t + 1], attention_mask=seen, position_ids=position, past_key_values=cache, use_cache=True)
                out.append(step.logits[:, -1])
        logits.append(torch.stack(out))
    assert logits[0].abs().max() > 1e-2  # a signal worth comparing
    torch.testing.assert_close(logits[0], logits[1], atol=tol, rtol=tol)


def test_generate_gives_the_same_tokens_either_way():
    absorbed, expanded = _pair()
    ids, mask = _left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(absorbed.generate(ids, **kwargs), expanded.generate(ids, **kwargs))


def test_decode_never_expands_the_cache():
    """In auto mode the prefill expands its own chunk; every decode step reads the cache in latent space:
    kv_b_proj (the up-projection) is never called on cached tokens."""
    model = tiny_model("deepseek")
    calls = []
    for layer in model.model.layers:
        layer.self_attn.kv_b_proj.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    ids, mask = _left_padded()
    model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    layers = len(model.model.layers)
    assert len(calls) == layers and all(shape[-2] == ids.shape[1] for shape in calls)  # the prefill only


def test_cache_holds_the_latent_and_the_rope_key_only():
    """After generate() the cache holds (kv_lora_rank + qk_rope_head_dim) values per token per layer:
    exactly `cache_bytes_per_token`, and far below what full per-head keys and values would take."""
    model = tiny_model("deepseek").to(torch.bfloat16)
    ids = torch.randint(3, 250, (1, 5))
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
    context = out.sequences.shape[1] - 1  # the last token is never fed back
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    cfg = model.config
    assert cache.layers[0].keys.shape == (1, 1, context, cfg.kv_lora_rank)
    assert cache.layers[0].values.shape == (1, 1, context, cfg.qk_rope_head_dim)
    predicted = cache_bytes_per_token(cfg, context, dtype=torch.bfloat16)
    assert predicted["total_bytes"] == held
    assert predicted["mha_equivalent_bytes_per_token"] > 4 * predicted["bytes_per_token"]


def test_latent_attention_oracle_is_attention_over_the_expanded_keys():
    """The op's math, independent of the mixer: latent-space MQA equals per-head attention over keys
    k_h = [W_UK,h c ; k_rope] and values W_UV,h c, for a causal chunk after cached positions."""
    gen = torch.Generator().manual_seed(0)
    b, h, tq, tk, r, dn, dr, dv = 2, 3, 4, 9, 8, 5, 4, 6
    c, k_rope = torch.randn(b, tk, r, generator=gen, dtype=torch.float64), torch.randn(b, tk, dr, generator=gen, dtype=torch.float64)
    w_uk, w_uv = torch.randn(h, dn, r, generator=gen, dtype=torch.float64), torch.randn(h, dv, r, generator=gen, dtype=torch.float64)
    q_nope, q_rope = torch.randn(b, h, tq, dn, generator=gen, dtype=torch.float64), torch.randn(b, h, tq, dr, generator=gen, dtype=torch.float64)
    q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)
    out = torch.einsum("bhtr,hvr->bhtv", mla_latent_attention_naive(q_latent, q_rope, c, k_rope, None, 0.3), w_uv)
    keys = torch.cat([torch.einsum("hdr,btr->bhtd", w_uk, c), k_rope[:, None].expand(b, h, tk, dr)], -1)
    values = torch.einsum("hvr,btr->bhtv", w_uv, c)
    causal = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.cat([q_nope, q_rope], -1), keys, values, attn_mask=causal, scale=0.3
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"qk_rope_head_dim": 7}, "qk_rope_head_dim=7 must be even"),
        ({"kv_lora_rank": 0}, "kv_lora_rank=0 must be a positive integer"),
        ({"q_lora_rank": -1}, "q_lora_rank=-1 must be a positive integer"),
        ({"mla_mode": "fast"}, "mla_mode='fast' is unknown"),
        ({"mla_kernel": "cuda"}, "mla_kernel='cuda' is unknown"),
        ({"layer_pattern": "mla/moe attn/moe", "head_dim": 16}, "head_dim=16 must equal the RoPE block"),
        ({"router_type": "deepseek", "n_group": 2, "topk_group": 3}, "topk_group"),
    ],
)
def test_bad_mla_settings_name_the_field(fields, match):
    base = dict(hidden_size=64, num_attention_heads=4, vocab_size=64, kv_lora_rank=16, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=8, num_experts=4, num_experts_per_tok=2)
    with pytest.raises(ValueError, match=match):
        LlmArchDeepseekConfig(**{**base, **fields})


def test_auto_mode_absorbs_short_chunks_and_expands_long_ones():
    """After cached tokens a chunk shorter than R (dn + dv) / (2R - dn - dv) = 16 here absorbs; a longer
    one (a chunked prefill) expands the cache once, which costs fewer FLOPs. Both equal the full forward."""
    model = tiny_model("deepseek", kv_lora_rank=16, qk_nope_head_dim=8, v_head_dim=8).double()
    assert model.model.layers[0].self_attn.absorb_below == 16
    seen = []
    model.model.layers[0].self_attn.kv_b_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2]))
    ids = torch.randint(3, 250, (1, 29))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        seen.clear()
        chunks = [model(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in ((0, 6), (6, 9), (9, 29))]
    assert seen == [6, 29]  # the prefill expands its own 6 tokens; the 3-token chunk absorbs; the 20-token one expands all 29
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-10, rtol=1e-8)
