"""Router losses and statistics shared by every router: expert load counts, the Switch/Mixtral
load-balancing loss and ST-MoE z-loss, the squared coefficient of variation (Shazeer 2017) and the
entropy of the expert load. All count real (non-padded) tokens only."""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


def count_tokens_per_expert(topk_idx: torch.Tensor, num_experts: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [E]: assignments over all k slots of the real tokens (real [N] bool, None = all)."""
    flat = topk_idx.reshape(-1)  # [N*k]
    weight = torch.ones_like(flat) if real is None else real[:, None].expand(topk_idx.shape).reshape(-1).long()
    return torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add(0, flat, weight)


def router_losses(
    router_logits: torch.Tensor,
    topk_idx: torch.Tensor,
    num_experts: int,
    token_mask: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    with_z: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(load_balancing_loss, z_loss, tokens_per_expert) for one layer, over real tokens only.

    router_logits [N, E]; topk_idx [N, k]; token_mask [N] (True = real token) or None (all real);
    probs: softmax(logits) when the router already has it; with_z=False skips the z-loss (None).
    lb = E * sum_e (count_e / N_real) * mean_real(softmax(logits))[e]   (HF Mixtral, one layer)
    z  = mean_real(logsumexp(logits) ** 2)                             (ST-MoE)
    tokens_per_expert: int64 [E], assignments over all k slots of real tokens.
    """
    logits = router_logits.float()
    real = real_mask(token_mask, topk_idx.shape[0], logits.device)
    n_real = real.sum().clamp_min(1).float()
    tokens_per_expert = count_tokens_per_expert(topk_idx, num_experts, real)

    # where() rather than multiplying by the mask, so inf/nan logits at padded tokens cannot leak in.
    probs = torch.where(real.unsqueeze(1), logits.softmax(-1) if probs is None else probs, 0.0)  # [N, E]
    lb = num_experts * (tokens_per_expert.float() / n_real * (probs.sum(0) / n_real)).sum()
    if not with_z:
        return lb, None, tokens_per_expert
    lse = torch.where(real, torch.logsumexp(logits, dim=-1), 0.0)  # [N]
    z = lse.square().sum() / n_real
    return lb, z, tokens_per_expert


def load_entropy(tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the expert-load distribution: log(E) when perfectly balanced, 0 when one expert gets all."""
    frac = tokens_per_expert.float() / tokens_per_expert.sum().clamp_min(1)  # [E]
    return -(frac * frac.clamp_min(1e-30).log()).sum()


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, population variance / mean^2 (Shazeer 2017's balance measure)."""
    return x.var(unbiased=False) / (x.mean().square() + 1e-10)


def real_mask(token_mask: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if token_mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return token_mask.reshape(n).to(device=device, dtype=torch.bool)


@dataclass
class RouterAux:
    """losses: name -> unweighted scalar (empty when not computed). The expert load is counted only
    when read (training statistics, the Trainer's logging): decode steps never pay for it."""

    topk_idx: torch.Tensor  # [N, k] int64
    counted: torch.Tensor  # [N] bool: tokens the experts actually process (real, and for Switch kept)
    num_experts: int
    dropped_tokens: torch.Tensor | None = None  # int64 []: real tokens whose expert was full (Switch only)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """int64 [E]: assignments over all k slots of the counted tokens."""
        return count_tokens_per_expert(self.topk_idx, self.num_experts, self.counted)

    def statistics(self) -> "RouterAux":
        """The same routing without the losses, so keeping it holds no autograd graph."""
        return RouterAux(self.topk_idx.detach(), self.counted.detach(), self.num_experts, self.dropped_tokens)


class RouterOutput(NamedTuple):
    topk_idx: torch.Tensor  # [N, k] int64
    topk_weight: torch.Tensor  # [N, k] fp32
    aux: RouterAux
