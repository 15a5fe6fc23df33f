"""Per-expert loop over routed experts: the reference (test oracle) for the faster paths.

An expert is gated (SwiGLU: gate_up_proj [E, 2I, H], act(gate) * up) or plain (Switch's ReLU
FFN: gate_up_proj [E, I, H], act(up)); the weights' shapes say which."""

from collections.abc import Callable

import torch
import torch.nn.functional as F


def experts_naive(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """y[n] = sum_j topk_weight[n, j] * Expert_{topk_idx[n, j]}(x[n]).

    x [N, H]; topk_idx [N, k] int64; topk_weight [N, k];
    gate_up_proj [E, 2I, H] (rows [:I] = gate, [I:] = up, as MixtralExperts) or [E, I, H] (plain);
    down_proj [E, H, I].
    Returns [N, H] in x.dtype.
    """
    y = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, topk_weight.dtype), device=x.device)
    for e in range(gate_up_proj.shape[0]):
        tok, slot = torch.where(topk_idx == e)  # [n_e] each
        if tok.numel() == 0:
            continue
        h = F.linear(expert_hidden(F.linear(x[tok], gate_up_proj[e]), act_fn, down_proj), down_proj[e])  # [n_e, H]
        y = y.index_add(0, tok, h * topk_weight[tok, slot, None])
    return y.to(x.dtype)


def expert_hidden(projected: torch.Tensor, act_fn: Callable[[torch.Tensor], torch.Tensor], down_proj: torch.Tensor) -> torch.Tensor:
    """[..., I] hidden of an expert from its input projection: act(gate) * up of [..., 2I], or act of a
    plain expert's [..., I] (down_proj [E, H, I] gives I)."""
    if projected.shape[-1] == down_proj.shape[-1]:
        return act_fn(projected)
    gate, up = projected.chunk(2, dim=-1)
    return act_fn(gate) * up
