"""DeepSeek Sparse Attention (`dsa`): dense MLA exactly when index_topk covers the context, a real
selection below it that the cache reproduces step by step, the indexer's keys kept in transformers'
indexed cache layer, and bad settings named."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

from hf_llmarch.accounting import cache_bytes_per_token
from hf_llmarch.models.deepseek import LlmArchDeepseekConfig

DSA = dict(layer_pattern="dsa/mlp (dsa/moe)x2", index_n_heads=4, index_head_dim=16)


def _dsa(topk, **overrides):
    return tiny_model("deepseek", index_topk=topk, **DSA, **overrides).double()


def test_dsa_is_dense_mla_when_the_top_k_covers_the_context():
    mla = tiny_model("deepseek", layer_pattern="mla/mlp (mla/moe)x2").double()
    dsa = _dsa(topk=64)
    missing, unexpected = dsa.load_state_dict(mla.state_dict(), strict=False)
    assert not unexpected and all(".indexer." in key for key in missing)
    ids = torch.randint(3, 250, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(dsa(ids).logits, mla(ids).logits, atol=1e-12, rtol=1e-10)
        assert (_dsa(topk=3)(ids).logits - mla(ids).logits).abs().max() > 1e-3  # below it, a real selection


@pytest.mark.parametrize("mla_mode", ["absorb", "expand"])
def test_sparse_decode_step_by_step_equals_the_full_forward(mla_mode):
    """index_topk 3 of up to 13 keys: the indexer's cached keys select the same keys one token at a time."""
    model = _dsa(topk=3, mla_mode=mla_mode)
    ids = torch.randint(3, 250, (2, 13))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :5], past_key_values=cache, use_cache=True).logits]
        steps += [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(5, 13)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)
    layer = cache.layers[0]
    assert type(layer).__name__ == "DynamicIndexedLayer" and layer.indexer_keys.shape == (2, 13, 16)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_generate_with_left_padding_equals_uncached(cache_implementation):
    model = _dsa(topk=4).float()
    ids = torch.randint(3, 250, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, cache_implementation=cache_implementation, **kwargs)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))


def test_cache_holds_the_latent_the_rope_key_and_the_indexer_key():
    model = _dsa(topk=4).to(torch.bfloat16)
    ids = torch.randint(3, 250, (1, 6))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values, layer.indexer_keys))
    assert cache_bytes_per_token(model.config, 6, dtype=torch.bfloat16)["total_bytes"] == held


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"q_lora_rank": None}, "q_lora_rank=None: the DSA indexer reads the query latent"),
        ({"index_head_dim": 4}, "index_head_dim=4 must be at least qk_rope_head_dim=8"),
        ({"index_topk": 0}, "index_topk=0 must be a positive integer"),
    ],
)
def test_bad_dsa_settings_name_the_field(fields, match):
    base = dict(hidden_size=64, num_attention_heads=4, vocab_size=64, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=8, layer_pattern="dsa/mlp", index_n_heads=2, index_head_dim=16)
    with pytest.raises(ValueError, match=match):
        LlmArchDeepseekConfig(**{**base, **fields})


def test_flex_attention_is_refused_by_name():
    model = _dsa(topk=4, attn_implementation="flex_attention").float()
    with pytest.raises(ValueError, match="`dsa` layers need a dense attention mask"):
        model(torch.randint(3, 250, (1, 6)))
