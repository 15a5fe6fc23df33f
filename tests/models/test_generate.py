"""generate() and cache behaviour for every family: greedy, sampling, beam, left padding,
use_cache on/off, prefill + cached decode == full forward."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache


def prompts(batch=2, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (batch, length), generator=g)


def test_greedy_cache_on_equals_off(family):
    model = tiny_model(family)
    ids = prompts()
    on = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    off = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert on.shape == (2, 18)
    assert torch.equal(on, off)


def test_sampling_is_seeded_and_valid(family):
    model = tiny_model(family)
    ids = prompts()
    torch.manual_seed(0)
    a = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, temperature=0.9)
    torch.manual_seed(0)
    b = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, temperature=0.9)
    assert torch.equal(a, b)
    assert a.shape == (2, 14) and int(a.max()) < model.config.vocab_size


def test_beam_search_matches_uncached(family):
    model = tiny_model(family)
    ids = prompts(batch=1)
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, early_stopping=False)
    cached = model.generate(ids, use_cache=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_equals_each_prompt_alone(family):
    model = tiny_model(family)
    pad = model.config.pad_token_id
    short, long = prompts(1, 3, seed=2)[0], prompts(1, 7, seed=3)[0]
    batch = torch.full((2, 7), pad)
    batch[0, 4:], batch[1] = short, long
    mask = (torch.arange(7) >= torch.tensor([[4], [0]])).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=pad)
    for row, prompt in enumerate((short, long)):
        alone = model.generate(prompt[None], max_new_tokens=10, do_sample=False, pad_token_id=pad)
        assert torch.equal(out[row, 7:], alone[0, len(prompt) :]), f"row {row} differs from the prompt alone"


@pytest.mark.parametrize("left_pad", [0, 3])
def test_prefill_then_cached_decode_equals_full_forward(family, left_pad):
    model = tiny_model(family)
    ids = prompts(2, 12, seed=4)
    mask = torch.ones_like(ids)
    mask[0, :left_pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=position_ids).logits
        cache = DynamicCache(config=model.config)
        split = 8
        steps = [model(ids[:, :split], attention_mask=mask[:, :split], position_ids=position_ids[:, :split], past_key_values=cache, use_cache=True).logits]
        for t in range(split, 12):  # one token at a time, then compare with the single full pass
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=position_ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("with_position_ids", [True, False])
def test_left_padded_prompt_in_two_chunks_equals_full_forward(family, with_position_ids):
    """A padded prompt fed in two multi-token calls with a growing mask (chunked prefill): each
    call must read the last columns of the mask, and count positions from what the cache holds."""
    model = tiny_model(family)
    ids = prompts(2, 13, seed=8)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0) if with_position_ids else None
    chunks = [slice(0, 6), slice(6, 13)]
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=position_ids).logits
        cache = DynamicCache(config=model.config)
        parts = [
            model(
                ids[:, c], attention_mask=mask[:, : c.stop], cache=cache, use_cache=True,
                position_ids=None if position_ids is None else position_ids[:, c],
            ).logits
            for c in chunks
        ]
    real = mask.bool()
    torch.testing.assert_close(torch.cat(parts, 1)[real], full[real], atol=2e-5, rtol=1e-4)


def test_multi_token_continuation_from_cache(family):
    model = tiny_model(family)
    ids = prompts(2, 12, seed=5)
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        first = model(ids[:, :5], past_key_values=cache, use_cache=True).logits
        rest = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=2e-5, rtol=1e-4)


def test_padded_row_equals_unpadded_row(family):
    model = tiny_model(family)
    ids = prompts(1, 9, seed=6)
    pad = model.config.pad_token_id
    padded = torch.cat([torch.full((1, 4), pad), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(ids).logits
        with_pad = model(padded, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 4:]
        # Without position_ids: learned positions count real tokens themselves; RoPE is relative.
        mask_only = model(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(with_pad, alone, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(mask_only, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["eager", "flex_attention"])
def test_attention_implementations_agree(impl):
    model = tiny_model("mistral")
    ids = prompts(2, 10)
    with torch.no_grad():
        ref = model(ids).logits
        model.set_attn_implementation(impl)
        other = model(ids).logits
    assert model.config._attn_implementation == impl
    torch.testing.assert_close(other, ref, atol=1e-5, rtol=1e-4)


def test_static_cache_generate_matches_dynamic(family):
    """generate() prebuilds a dict of per-layer-type masks for static caches; left padding included."""
    model = tiny_model(family)
    ids = prompts(2, 6, seed=7)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    dynamic = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    static = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("how", ["assistant_model", "prompt_lookup_num_tokens"])
def test_speculative_decoding_equals_greedy_or_is_refused(family, how):
    """Attention-only stacks verify draft tokens exactly; a recurrent state cannot drop rejected
    drafts, so stacks with retention refuse with transformers' own clear error."""
    model = tiny_model(family)
    ids = prompts(1, 6, seed=3)
    extra = {"assistant_model": tiny_model(family, seed=5)} if how == "assistant_model" else {how: 2}
    greedy = model.generate(ids, max_new_tokens=10, do_sample=False)
    if model._is_stateful:  # any recurrent state, par() layers included
        with pytest.raises(ValueError, match="stateful"):
            model.generate(ids, max_new_tokens=10, do_sample=False, **extra)
    else:
        assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=False, **extra), greedy)


def test_right_padded_prefill_then_continuation_equals_unpadded(family):
    """Pads at the end of a prefill must leave the cache as the real tokens left it: a recurrent state
    neither written nor decayed by them, an attention cache whose pad keys stay masked."""
    model = tiny_model(family)
    if model.config.sliding_window is not None:
        pytest.skip("a sliding window counts cache slots: right pads in the cache take window places from real keys")
    ids, follow = prompts(1, 9, seed=7), prompts(1, 3, seed=8)
    padded = torch.cat([ids, torch.full((1, 4), model.config.pad_token_id)], 1)
    mask = torch.cat([torch.ones(1, 9, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        expected = model(torch.cat([ids, follow], 1)).logits[:, 9:]
        cache = DynamicCache(config=model.config)
        model(padded, attention_mask=mask, past_key_values=cache, use_cache=True)
        mask = torch.cat([mask, torch.ones(1, 3, dtype=torch.long)], 1)
        got = model(follow, attention_mask=mask, position_ids=torch.arange(9, 12)[None], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
