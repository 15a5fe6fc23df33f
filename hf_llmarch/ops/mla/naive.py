"""Multi-head latent attention in latent space (weight absorption), the oracle for every fast path.

With W_UK absorbed into the query (q_latent = q_nope W_UK, per head) and W_UV applied after the
attention, MLA is multi-query attention over the cache itself: one shared "key" of width R + Dr
(the normed latent c_kv beside the rotated shared key k_rope) and one shared "value", the latent.
Nothing per head is ever built from the cache (layers.md §2b).

    scores[b, h, q, t] = (q_latent[b, h, q] . latent[b, t] + q_rope[b, h, q] . k_rope[b, t]) * scale
    o_latent[b, h, q]  = softmax_t(scores + mask) @ latent[b]
"""

import torch


def mla_latent_attention_naive(q_latent, q_rope, latent, k_rope, mask, scale: float) -> torch.Tensor:
    """q_latent [B, H, Tq, R], q_rope [B, H, Tq, Dr], latent [B, Tk, R], k_rope [B, Tk, Dr];
    mask: None (causal, the queries being the last Tq of the Tk positions) or [B, 1, Tq, Tk] bool
    (True = attend) or additive float. Returns o_latent [B, H, Tq, R] in q_latent's dtype; scores,
    softmax and the weighted sum run in fp32 (fp64 stays fp64)."""
    wide = torch.float64 if q_latent.dtype == torch.float64 else torch.float32
    latent = latent.to(wide)  # once: the scores and the output both read it
    scores = torch.einsum("bhqr,btr->bhqt", q_latent.to(wide), latent)
    scores = scores + torch.einsum("bhqd,btd->bhqt", q_rope.to(wide), k_rope.to(wide))
    scores = scores * scale + additive_mask(mask, scores)
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqt,btr->bhqr", weights, latent).to(q_latent.dtype)


def additive_mask(mask, scores: torch.Tensor) -> torch.Tensor:
    """The mask as a float to add to `scores` [B, H, Tq, Tk]: 0 where a query attends, the lowest
    finite value elsewhere (as transformers' eager masks)."""
    if mask is None:
        tq, tk = scores.shape[-2:]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).tril(tk - tq)
    elif mask.dtype == torch.bool:
        allowed = mask
    else:
        return mask.to(scores.dtype)
    # The dtype's lowest finite value, not -inf: a query that may attend to nothing (a left pad in a
    # prefill) then averages instead of turning NaN and spreading through the next layers' keys.
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return zero.masked_fill(~allowed, torch.finfo(scores.dtype).min)
