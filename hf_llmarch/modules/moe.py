"""Sparse MoE feed-forward: a router chosen by `config.router_type` (see `routers.py`), fused 3D
expert weights and, optionally, a shared expert every token passes through (gated as in Qwen2-MoE). The default router is Mixtral's fp32 softmax top-k with the Switch/Mixtral
load-balancing loss and the ST-MoE router z-loss."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from transformers.activations import ACT2FN

from ..ops.moe import moe_experts, validate_moe_impl
from .mlp import build_mlp
from .router_stats import RouterAux, RouterOutput, count_tokens_per_expert, load_entropy, router_losses
from .router_registry import build_router, validate_router_config
from .routers import DeepSeekRouter

__all__ = [
    "BiasUpdateCallback", "MoEExperts", "MoEFeedForward", "MoEStatsCallback", "count_tokens_per_expert", "router_losses",
]


class MoEExperts(nn.Module):
    """E experts stored as fused 3D weights in the transformers v5 (MixtralExperts) layout: SwiGLU-style
    (gate_up_proj [E, 2I, H]), or plain as Switch Transformers' ReLU FFNs (`gated=False`: the input
    projection alone, gate_up_proj [E, I, H]); the experts follow the config's `mlp_gated`."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str, impl: str = "auto",
                 gated: bool = True):
        super().__init__()
        self.num_experts = num_experts
        self.impl = validate_moe_impl(impl)
        rows = (2 if gated else 1) * intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, rows, hidden_size))  # [E, 2I or I, H]
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))  # [E, H, I]
        self.act_fn = ACT2FN[hidden_act]

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.gate_up_proj, mean=0.0, std=std)
        nn.init.normal_(self.down_proj, mean=0.0, std=std)

    @torch.no_grad()
    def realign_(self) -> None:
        """Move CPU expert weights that sit off a 64-byte boundary into fresh storage. safetensors maps
        tensors at 8-byte offsets, and CPU grouped_mm then takes another kernel whose rounding differs
        (~3e-8), so a reloaded model would not reproduce the saved one exactly."""
        for param in (self.gate_up_proj, self.down_proj):
            if param.device.type == "cpu" and param.data_ptr() % 64:
                param.data = param.data.clone()

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """x [N, H]; topk_idx, topk_weight [N, k] -> [N, H]."""
        if getattr(self, "_is_expert_parallel", False):
            # transformers' all-reduce expert parallelism sends pairs owned by another rank to the id
            # num_local_experts with weight 0: clamp so it indexes a weight; the zero weight drops it.
            topk_idx = topk_idx.clamp(max=self.gate_up_proj.shape[0] - 1)
        return moe_experts(x, topk_idx, topk_weight, self.gate_up_proj, self.down_proj, self.act_fn, impl=self.impl)


class MoEFeedForward(nn.Module):
    """Top-k routed FFN, plus the shared expert when the config has one (a token the router drops still
    gets it). forward returns (out, aux_loss) and records per-layer router statistics:
    `last_tokens_per_expert` (int64 [E]), `last_dropped_tokens`, `last_load_entropy` and, when the aux
    loss is computed, `last_losses` (unweighted, by name)."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        # Logit projection every router uses; named `gate` so checkpoints keep the key `mlp.gate.weight`.
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.router = build_router(config)
        self.experts = MoEExperts(
            self.num_experts, config.hidden_size, config.moe_intermediate_size, config.hidden_act, config.moe_impl,
            gated=config.mlp_gated,
        )
        shared_size = config.shared_expert_intermediate_size
        self.shared_expert = build_mlp(config, shared_size) if shared_size else None
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False) if config.shared_expert_gate else None
        self._last_routing: RouterAux | None = None  # the latest forward's routing, counted when read
        self.last_losses: dict[str, torch.Tensor] = {}

    @staticmethod
    def validate(config) -> None:
        """The config's hook for layers of kind `moe`: router defaults and checks (see routers.py)."""
        validate_router_config(config)

    @property
    def last_tokens_per_expert(self) -> torch.Tensor | None:
        """int64 [E] from the latest forward, counted when read (decode steps skip the counting)."""
        return None if self._last_routing is None else self._last_routing.tokens_per_expert

    @property
    def last_dropped_tokens(self) -> torch.Tensor | None:
        if self._last_routing is None:
            return None
        dropped = self._last_routing.dropped_tokens
        return torch.zeros((), dtype=torch.long, device=self._last_routing.topk_idx.device) if dropped is None else dropped

    @property
    def last_load_balancing_loss(self) -> torch.Tensor | None:
        return self.last_losses.get("load_balancing")

    @property
    def last_load_entropy(self) -> torch.Tensor | None:
        """Derived when read (the Trainer's logging), not in every forward: decode steps skip it."""
        return None if self.last_tokens_per_expert is None else load_entropy(self.last_tokens_per_expert)

    @property
    def last_z_loss(self) -> torch.Tensor | None:
        return self.last_losses.get("z")

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, H] -> [N, E] fp32 (fp64 for an fp64 model: the oracle keeps its precision)."""
        # The router runs in fp32 even under autocast (Switch "selective precision"); entering the
        # autocast context costs host time at every decode step, so only when autocast is on.
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.training and self.router.jitter_noise > 0:  # Switch's input jitter
            x = x * torch.empty_like(x).uniform_(1.0 - self.router.jitter_noise, 1.0 + self.router.jitter_noise)
        if not torch.is_autocast_enabled(x.device.type):
            return F.linear(x.to(wide), self.gate.weight.to(wide))
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.to(wide), self.gate.weight.to(wide))

    def route(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
        sequences: tuple[torch.Tensor, int] | None = None, compute_losses: bool = True,
    ) -> RouterOutput:
        """x [N, H]; token_mask [N] (nonzero = real) or None; sequences (ids [N], count) as `sequence_ids`
        gives, or None for one sequence. Returns RouterOutput with topk_weight in x.dtype."""
        n = x.shape[0]
        real = torch.ones(n, dtype=torch.bool, device=x.device) if token_mask is None else token_mask.reshape(n).bool()
        out = self.router(x, self.router_logits(x), real, sequences, compute_losses)
        return out._replace(topk_weight=out.topk_weight.to(x.dtype))

    def forward(
        self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None,
        sequence_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, T, H]; token_mask [B, T] (nonzero = real token) or None; sequence_starts [B, T]
        bool marks where packed sequences start (None: each row is one sequence).
        Returns (out [B, T, H], aux_loss = sum of the router's coefficient * loss). The aux loss is computed
        in training mode or whenever autograd records; under `torch.no_grad()` in eval mode (inference,
        generate) it is None and only the statistics are updated."""
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [N, H]
        # The aux loss is a training objective: pure inference (e.g. generate) skips it.
        compute_losses = self.training or torch.is_grad_enabled()
        # Sequence-wise losses and per-sequence capacity read the ids; other inference skips building them.
        wants_sequences = compute_losses or self.router.needs_sequences
        sequences = sequence_ids(hidden_states, sequence_starts) if wants_sequences and hidden_states.dim() == 3 else None
        topk_idx, topk_weight, aux = self.route(x, token_mask, sequences, compute_losses)
        out = self.experts(x, topk_idx, topk_weight)  # [N, H]
        if self.shared_expert is not None:
            out = out + self._shared_output(x)
        out = out.view_as(hidden_states)

        self._last_routing = aux.statistics()
        if not compute_losses:
            return out, None
        self.last_losses = {name: loss.detach() for name, loss in aux.losses.items()}
        coefs = self.router.loss_coefs
        return out, sum(coefs[name] * loss for name, loss in aux.losses.items())


    def _shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, H] -> [N, H]: the shared expert, scaled per token by its sigmoid gate when there is one."""
        shared = self.shared_expert(x)
        if self.shared_expert_gate is None:
            return shared
        return torch.sigmoid(self.shared_expert_gate(x)) * shared


def sequence_ids(hidden_states: torch.Tensor, sequence_starts: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """(ids [B*T] int64, count): the sequence of each token, for sequence-wise router losses. A row is one
    sequence, or, packed, each start in `sequence_starts` [B, T] opens the next (ids stay below B*T)."""
    b, t = hidden_states.shape[:2]
    rows = torch.arange(b, device=hidden_states.device)[:, None]  # [B, 1]
    if sequence_starts is None:
        return rows.expand(b, t).reshape(-1), b
    return (rows * t + sequence_starts.long().cumsum(-1)).reshape(-1), b * t


class MoEStatsCallback(TrainerCallback):
    """Adds each MoE layer's statistics from its latest forward to the Trainer logs:
    `moe/<module name>/{dropped_tokens, load_entropy, max_load}` (max_load = busiest expert's load / mean
    load, 1.0 when balanced) and its unweighted losses `moe/<module name>/<loss>`.
    Use: `Trainer(..., callbacks=[MoEStatsCallback()])`. Callbacks run in order and `report_to` integrations
    come before user callbacks, so for them to see these keys put it first:
    `trainer.callback_handler.callbacks.insert(0, MoEStatsCallback())`. (`state.log_history` is written
    before any on_log, so it never holds them.)"""

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None:
            return
        for name, layer in model.named_modules():
            if isinstance(layer, MoEFeedForward) and layer.last_tokens_per_expert is not None:
                logs.update({f"moe/{name}/{key}": value for key, value in layer_stats(layer).items()})


def layer_stats(layer: MoEFeedForward) -> dict[str, float]:
    load = layer.last_tokens_per_expert.float()  # [E]
    stats = {
        "dropped_tokens": float(layer.last_dropped_tokens),
        "load_entropy": float(layer.last_load_entropy),
        "max_load": float(load.max() / load.mean().clamp_min(1e-9)),
    }
    return stats | {loss_name: float(loss) for loss_name, loss in layer.last_losses.items()}


class BiasUpdateCallback(TrainerCallback):
    """Aux-loss-free balancing for `router_type='deepseek'`: `Trainer(..., callbacks=[BiasUpdateCallback()])`.

    After each optimizer step (once per step under gradient accumulation) every DeepSeek router moves its
    bias by gamma * sign(mean_load - load_e) from the loads since the previous step. gamma=None uses each
    router's `bias_update_rate`."""

    def __init__(self, gamma: float | None = None):
        self.gamma = gamma

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for module in model.modules():
            if isinstance(module, DeepSeekRouter):
                module.update_bias(self.gamma)
