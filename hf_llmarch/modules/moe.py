"""Mixtral-style sparse MoE feed-forward: fp32 softmax top-k router, fused 3D expert weights,
Switch/Mixtral load-balancing loss and ST-MoE router z-loss."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..ops.moe import moe_experts, validate_moe_impl


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(load_balancing_loss, z_loss, tokens_per_expert) for one layer, over real tokens only.

    router_logits [N, E]; topk_idx [N, k]; token_mask [N] (True = real token) or None (all real).
    lb = E * sum_e (count_e / N_real) * mean_real(softmax(logits))[e]   (HF Mixtral, one layer)
    z  = mean_real(logsumexp(logits) ** 2)                             (ST-MoE)
    tokens_per_expert: int64 [E], assignments over all k slots of real tokens.
    """
    logits = router_logits.float()
    n = topk_idx.shape[0]
    if token_mask is None:
        real = torch.ones(n, dtype=torch.bool, device=logits.device)
    else:
        real = token_mask.reshape(n).to(device=logits.device, dtype=torch.bool)
    n_real = real.sum().clamp_min(1).float()
    tokens_per_expert = count_tokens_per_expert(topk_idx, num_experts, real)

    # where() rather than multiplying by the mask, so inf/nan logits at padded tokens cannot leak in.
    probs = torch.where(real.unsqueeze(1), logits.softmax(-1), 0.0)  # [N, E]
    lb = num_experts * (tokens_per_expert.float() / n_real * (probs.sum(0) / n_real)).sum()
    lse = torch.where(real, torch.logsumexp(logits, dim=-1), 0.0)  # [N]
    z = lse.square().sum() / n_real
    return lb, z, tokens_per_expert


class MoEExperts(nn.Module):
    """E SwiGLU-style experts stored as fused 3D weights in the transformers v5 (MixtralExperts) layout."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str, impl: str = "auto"):
        super().__init__()
        self.num_experts = num_experts
        self.impl = validate_moe_impl(impl)
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))  # [E, 2I, H]
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))  # [E, H, I]
        self.act_fn = ACT2FN[hidden_act]

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.gate_up_proj, mean=0.0, std=std)
        nn.init.normal_(self.down_proj, mean=0.0, std=std)

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """x [N, H]; topk_idx, topk_weight [N, k] -> [N, H]."""
        return moe_experts(x, topk_idx, topk_weight, self.gate_up_proj, self.down_proj, self.act_fn, impl=self.impl)


class MoEFeedForward(nn.Module):
    """Top-k routed FFN (Mixtral routing). forward returns (out, aux_loss) and records router statistics."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.router_z_loss_coef = config.router_z_loss_coef
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = MoEExperts(
            self.num_experts, config.hidden_size, config.moe_intermediate_size, config.hidden_act, config.moe_impl
        )
        self.last_tokens_per_expert: torch.Tensor | None = None
        self.last_load_balancing_loss: torch.Tensor | None = None
        self.last_z_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] -> (router_logits [N, E] fp32, topk_weight [N, k] in x.dtype, topk_idx [N, k])."""
        # The router runs in fp32 even under autocast (Switch "selective precision").
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        topk_weight, topk_idx = probs.topk(self.top_k, dim=-1)  # [N, k]
        if self.norm_topk_prob:
            topk_weight = topk_weight / topk_weight.sum(dim=-1, keepdim=True)
        return logits, topk_weight.to(x.dtype), topk_idx

    def forward(
        self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states [B, T, H]; token_mask [B, T] (nonzero = real token) or None.
        Returns (out [B, T, H], aux_loss = aux_coef * load_balancing + z_coef * z_loss). The aux loss
        is computed in training mode or whenever autograd records; under `torch.no_grad()` in eval
        mode (inference, generate) it is None and only the per-expert token counts are updated."""
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [N, H]
        logits, topk_weight, topk_idx = self.route(x)
        out = self.experts(x, topk_idx, topk_weight).view_as(hidden_states)

        mask = None if token_mask is None else token_mask.reshape(-1).bool()  # [N]
        if not (self.training or torch.is_grad_enabled()):
            # Pure inference (e.g. generate): the aux loss is a training objective, so only count tokens.
            self.last_tokens_per_expert = count_tokens_per_expert(topk_idx, self.num_experts, mask)
            return out, None
        lb, z, tokens_per_expert = router_losses(logits, topk_idx, self.num_experts, mask)
        self.last_tokens_per_expert = tokens_per_expert.detach()
        self.last_load_balancing_loss = lb.detach()
        self.last_z_loss = z.detach()
        return out, self.router_aux_loss_coef * lb + self.router_z_loss_coef * z
