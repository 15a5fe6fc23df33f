"""Padding-free (packed) batches, as built by `DataCollatorWithFlattening` or TRL's
`padding_free=True`: several sequences in one row, told apart by position_ids restarting at 0.
Every family must treat each packed sequence exactly as if it were alone: attention through
transformers' packed-sequence mask, retention by restarting its state at each sequence start."""

import pytest
import torch
from conftest import tiny_model
from transformers import DataCollatorWithFlattening

# 70 + 50 + 9 = 129 tokens: retention takes its chunked path, with starts inside chunks.
LENGTHS = (70, 50, 9)


def _sequences(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 250, (n,), generator=gen).tolist() for n in LENGTHS]


@pytest.mark.parametrize("use_cache", [False, True])
def test_packed_row_equals_each_sequence_alone(family, use_cache):
    model = tiny_model(family)
    sequences = _sequences()
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=use_cache).logits
        alone = [model(torch.tensor([s])).logits[0] for s in sequences]
    torch.testing.assert_close(logits[0], torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_packed_loss_equals_padded_loss(family):
    """The same tokens as a padded batch with a mask: the same loss and the same gradients."""
    model = tiny_model(family, router_aux_loss_coef=0.0, router_z_loss_coef=0.0).train()
    sequences = _sequences(seed=1)
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])

    def loss_and_grads(**batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss_packed, grads_packed = loss_and_grads(**packed)
    loss_padded, grads_padded = loss_and_grads(**_padded(sequences))
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_packed, grads_padded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _padded(sequences) -> dict:
    """The sequences as a right-padded batch with its mask and labels."""
    ids = torch.zeros(len(sequences), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(sequences):
        ids[row, : len(s)], mask[row, : len(s)] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_sequence_wise_router_loss_counts_each_packed_sequence():
    """DeepSeek's balance loss is a mean over sequences: a packed row holds three, as the padded batch."""
    model = tiny_model("moe", router_type="deepseek", router_seq_aux_loss_coef=1.0, router_z_loss_coef=0.0).train()
    sequences = _sequences(seed=3)
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])
    aux_packed = model(**packed).aux_loss
    aux_padded = model(**_padded(sequences)).aux_loss
    torch.testing.assert_close(aux_packed, aux_padded, atol=1e-6, rtol=1e-5)


def test_filled_cache_is_not_taken_for_packing():
    """A continuation with explicit position_ids and no mask is decoding, not packing."""
    model = tiny_model("hybrid")
    ids = torch.randint(3, 250, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = model(ids[:, :8], use_cache=True).past_key_values
        step = model(ids[:, 8:], position_ids=torch.arange(8, 12)[None], past_key_values=cache).logits
    torch.testing.assert_close(step, full[:, 8:], atol=1e-5, rtol=1e-5)


def test_flash_varlen_kwargs_are_harmless_off_flash(family):
    """Collators built for flash-attn add cu_seq_lens / max_length; other kernels ignore them."""
    model = tiny_model(family)
    sequences = _sequences(seed=2)
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": s} for s in sequences])
    assert "cu_seq_lens_q" in batch
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = [model(torch.tensor([s])).logits[0] for s in sequences]
    torch.testing.assert_close(logits[0], torch.cat(alone), atol=1e-5, rtol=1e-5)
