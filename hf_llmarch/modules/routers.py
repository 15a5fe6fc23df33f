"""MoE routers, chosen by `config.router_type`. Each owns its config fields (defaults and checks).

One interface: `router(x [N, H], logits [N, E] fp32, real [N] bool, sequences, compute_losses)`, where
`sequences = (sequence_ids [N] int64, count)` says which sequence each token belongs to (a batch row, or
a packed sequence inside one), None meaning one sequence; only sequence-wise losses read it.
returns `RouterOutput(topk_idx [N, k], topk_weight [N, k] fp32, aux)`. `logits` is `x @ gate.weight.T`
from the MoE block's `gate` (kept there so checkpoints keep the Mixtral/DeepSeek key `mlp.gate.weight`).
`aux.losses` holds unweighted scalar losses over real tokens only; `router.loss_coefs` weights them.
Math and sources: reference/layers.md §1a.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .router_stats import RouterAux, RouterOutput, cv_squared, router_losses

# Fields every router reads; each router class adds its own in `FIELDS`.
# (num_experts, num_experts_per_tok, norm_topk_prob, router_aux_loss_coef and router_z_loss_coef are
# backbone config fields.)
SHARED_FIELDS = {"router_type": "softmax_topk"}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_reachable_experts(config) -> None:
    """Group-limited routing must leave at least k experts to choose from."""
    reachable = config.topk_group * (config.num_experts // config.n_group)
    _check(
        config.num_experts_per_tok <= reachable,
        f"num_experts_per_tok={config.num_experts_per_tok} exceeds the {reachable} experts in the topk_group="
        f"{config.topk_group} kept groups of {config.num_experts // config.n_group}: raise topk_group",
    )


class Router(nn.Module):
    """Base: reads its fields from the config; subclasses implement `forward`."""

    FIELDS: dict = {}

    jitter_noise = 0.0  # multiplicative noise on the router input in training (Switch)
    needs_sequences = False  # the router reads the sequence ids even without losses

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.loss_coefs = {"load_balancing": config.router_aux_loss_coef, "z": config.router_z_loss_coef}

    @classmethod
    def validate(cls, config) -> None:
        """Raise a ValueError naming the field for a setting this router cannot use."""

    def balance_losses(self, logits, probs, topk_idx, real) -> dict[str, torch.Tensor]:
        """Switch/Mixtral load balancing, and the z-loss unless its coefficient is 0 (then it is not
        computed: no logsumexp kept for backward)."""
        with_z = self.loss_coefs["z"] > 0
        lb, z, _ = router_losses(logits, topk_idx, self.num_experts, real, probs=probs, with_z=with_z)
        return {"load_balancing": lb, "z": z} if with_z else {"load_balancing": lb}


class SoftmaxTopKRouter(Router):
    """Mixtral: p = softmax(logits) in fp32, top-k of p, optionally renormalised over the k kept.
    DeepSeek-V2: with n_group > 1 the top-k is taken inside the topk_group groups whose best expert
    scores highest (group-limited greedy), and the weights are scaled by routed_scaling_factor.
    Losses: Switch/Mixtral load balancing and ST-MoE z-loss."""

    FIELDS = {"routed_scaling_factor": 1.0}

    def __init__(self, config):
        super().__init__(config)
        self.norm_topk_prob = config.norm_topk_prob
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor

    def forward(self, x, logits, real, sequences, compute_losses=True) -> RouterOutput:
        probs = logits.softmax(dim=-1)  # [N, E]
        topk_weight, topk_idx = self._within_best_groups(probs).topk(self.top_k, dim=-1)  # [N, k]
        if self.norm_topk_prob:
            topk_weight = topk_weight / topk_weight.sum(dim=-1, keepdim=True)
        if self.routed_scaling_factor != 1.0:
            topk_weight = topk_weight * self.routed_scaling_factor
        aux = RouterAux(topk_idx, real, self.num_experts)
        if compute_losses:
            aux.losses = self.balance_losses(logits, probs, topk_idx, real)
        return RouterOutput(topk_idx, topk_weight, aux)


    @classmethod
    def validate(cls, config) -> None:
        _check_reachable_experts(config)

    def _within_best_groups(self, probs: torch.Tensor) -> torch.Tensor:
        """probs with the experts outside the topk_group best groups (by their best expert) set to 0."""
        if self.n_group == 1:
            return probs
        grouped = probs.view(probs.shape[0], self.n_group, -1)  # [N, G, E/G]
        kept = grouped.amax(-1).topk(self.topk_group, dim=-1).indices  # [N, topk_group]
        keep = torch.zeros(grouped.shape[:2], dtype=torch.bool, device=probs.device).scatter(1, kept, True)
        return grouped.masked_fill(~keep[..., None], 0.0).view_as(probs)


class NoisyTopKRouter(Router):
    """Shazeer et al. 2017 noisy top-k gating.

    H = logits + eps * router_noise * softplus(x W_noise), eps ~ N(0, 1) in training only;
    G = softmax over KeepTopK(H, k). Losses (real tokens only), each with its own coefficient:
    importance = CV(sum_x G(x))^2, load = CV(sum_x P(x, .))^2 with the smooth load estimator
    P(x, i) = Phi((logits_i - kth_excluding(H, k, i)) / noise_std_i).
    """

    FIELDS = {"router_noise": 1.0, "router_importance_loss_coef": 0.1, "router_load_loss_coef": 0.1}

    def __init__(self, config):
        super().__init__(config)
        self.router_noise = config.router_noise
        self.noise = nn.Linear(config.hidden_size, self.num_experts, bias=False)  # W_noise
        self.loss_coefs = {"importance": config.router_importance_loss_coef, "load": config.router_load_loss_coef}

    @classmethod
    def validate(cls, config) -> None:
        _check(config.router_noise >= 0, f"router_noise={config.router_noise!r} must be >= 0 (it scales the gate noise)")
        _check(
            config.num_experts_per_tok < config.num_experts,
            f"num_experts_per_tok={config.num_experts_per_tok} must be below num_experts={config.num_experts} for "
            "router_type='noisy_topk': its load estimator compares each expert with the k-th best of the others",
        )

    def forward(self, x, logits, real, sequences, compute_losses=True) -> RouterOutput:
        with torch.autocast(device_type=x.device.type, enabled=False):
            raw_std = F.linear(x.float(), self.noise.weight.float())  # [N, E]
        noise_std = self.router_noise * F.softplus(raw_std)  # [N, E]
        noisy = logits + torch.randn_like(logits) * noise_std if self.training else logits  # H(x) [N, E]
        top_val, top_idx = noisy.topk(self.top_k + 1, dim=-1)  # [N, k+1]; the extra one feeds the load estimator
        topk_idx = top_idx[:, : self.top_k]  # [N, k]
        topk_weight = top_val[:, : self.top_k].softmax(dim=-1)  # softmax after KeepTopK
        aux = RouterAux(topk_idx, real, self.num_experts)
        if compute_losses:
            gates = torch.zeros_like(logits).scatter(1, topk_idx, topk_weight)  # G(x) [N, E]
            importance = torch.where(real[:, None], gates, 0.0).sum(0)  # [E]
            load_probs = self._load_probs(logits, noisy, top_val, top_idx, noise_std)  # P(x, i) [N, E]
            load = torch.where(real[:, None], load_probs, 0.0).sum(0)  # [E]
            aux.losses = {"importance": cv_squared(importance), "load": cv_squared(load)}
        return RouterOutput(topk_idx, topk_weight, aux)

    def _load_probs(self, logits, noisy, top_val, top_idx, noise_std) -> torch.Tensor:
        """P(x, i) [N, E]: probability that expert i stays in the top k when only its own noise is redrawn."""
        # Excluding i: if i is in the top k, the k-th best of the others is the (k+1)-th overall; else the k-th.
        in_top = torch.zeros_like(noisy, dtype=torch.bool).scatter(1, top_idx[:, : self.top_k], True)  # [N, E]
        threshold = torch.where(in_top, top_val[:, self.top_k :], top_val[:, self.top_k - 1 : self.top_k])  # [N, E]
        # clamp: with router_noise=0 the estimator tends to a step, not 0/0.
        return torch.special.ndtr((logits - threshold) / noise_std.clamp_min(1e-9))  # normal CDF


class SwitchRouter(Router):
    """Switch Transformer top-1 with expert capacity.

    p = softmax(logits), expert = argmax p, weight = p[expert]. capacity = ceil(capacity_factor * N_real / E)
    (layers.md §1a: "(tokens_per_batch / E) * capacity_factor", rounded up), or, with `expert_capacity`
    set, that many tokens per expert in each sequence (Switch Transformers' checkpoints). Real tokens
    beyond capacity in their expert, in token order, are dropped: weight 0, so the block outputs exactly
    0 and the residual carries them. Padded tokens take no capacity. Losses as Mixtral (k = 1, before
    dropping). `router_jitter_noise` multiplies the router's input by U(1 - j, 1 + j) in training."""

    FIELDS = {"capacity_factor": 1.25, "expert_capacity": None, "router_jitter_noise": 0.0}

    def __init__(self, config):
        super().__init__(config)
        self.capacity_factor = config.capacity_factor
        self.expert_capacity = config.expert_capacity
        self.jitter_noise = config.router_jitter_noise
        self.needs_sequences = self.expert_capacity is not None  # capacity counts per sequence

    @classmethod
    def validate(cls, config) -> None:
        _check(
            config.num_experts_per_tok == 1,
            f"num_experts_per_tok={config.num_experts_per_tok} but router_type='switch' routes each token to "
            "exactly one expert: set num_experts_per_tok=1",
        )
        capacity = config.expert_capacity
        _check(
            capacity is None or (isinstance(capacity, int) and not isinstance(capacity, bool) and capacity >= 1),
            f"expert_capacity={capacity!r} must be a positive number of tokens per expert and sequence, or None",
        )
        _check(0.0 <= config.router_jitter_noise < 1.0, f"router_jitter_noise={config.router_jitter_noise!r} must lie in [0, 1)")

    def capacity(self, n_real: torch.Tensor) -> torch.Tensor:
        """ceil(capacity_factor * n_real / E), kept on the device: a host read would sync and break compile."""
        return torch.ceil(self.capacity_factor * n_real / self.num_experts)

    def forward(self, x, logits, real, sequences, compute_losses=True) -> RouterOutput:
        probs = logits.softmax(dim=-1)  # [N, E]
        topk_weight, topk_idx = probs.max(dim=-1, keepdim=True)  # [N, 1]
        kept = self._within_capacity(topk_idx[:, 0], real, sequences)  # [N]
        topk_weight = torch.where(kept[:, None], topk_weight, 0.0)
        dropped = (real & ~kept).sum()
        aux = RouterAux(topk_idx, real & kept, self.num_experts, dropped)
        if compute_losses:
            aux.losses = self.balance_losses(logits, probs, topk_idx, real)
        return RouterOutput(topk_idx, topk_weight, aux)

    def _within_capacity(self, expert: torch.Tensor, real: torch.Tensor, sequences) -> torch.Tensor:
        """bool [N]: real tokens among the first `capacity` real tokens of their expert (in their
        sequence, with `expert_capacity`); padded tokens too (they take no capacity, and their output is
        never used)."""
        if self.expert_capacity is not None:
            return ~real | (_rank_in_group(sequences[0] * self.num_experts + expert, real) <= self.expert_capacity)
        onehot = F.one_hot(expert, self.num_experts) * real[:, None]  # [N, E]
        position = (onehot.cumsum(0) * onehot).sum(-1)  # [N] 1-based rank of each real token in its expert
        return ~real | (position <= self.capacity(real.sum()))


def _rank_in_group(group: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[N] 1-based rank of each real token among the real tokens of its group (sequence x expert), in
    token order; a stable sort keeps the order without an [N, groups] one-hot."""
    group = torch.where(real, group, -1)  # pads form their own group, ranked but never read
    order = torch.argsort(group, stable=True)
    ordered = group[order]
    first = torch.searchsorted(ordered, ordered)  # [N] where each token's group starts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, group.numel() + 1, device=group.device) - first
    return rank


class HierarchicalRouter(Router):
    """Two-level MoE (Shazeer 2017 §B): y = sum_g sum_j G_primary(x)_g * G_g(x)_j * E_{g,j}(x).

    Experts form n_group groups of E / n_group. G_primary = softmax over the topk_group best group logits
    (x W_group); inside each kept group, G_g = softmax over its top (k / topk_group) expert logits (the gate's
    rows for that group). Weights therefore sum to 1. No gate noise. Loss: Switch/Mixtral load balancing on
    the dense two-level probability p_e = softmax(group)_g(e) * softmax_within_group(logits)_e, plus z-loss
    on both levels."""

    def __init__(self, config):
        super().__init__(config)
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.per_group_k = self.top_k // self.topk_group
        self.group_gate = nn.Linear(config.hidden_size, self.n_group, bias=False)

    @classmethod
    def validate(cls, config) -> None:
        per_group = config.num_experts // config.n_group
        k, groups = config.num_experts_per_tok, config.topk_group
        _check(
            k % groups == 0 and k // groups <= per_group,
            f"num_experts_per_tok={config.num_experts_per_tok} must be topk_group={config.topk_group} times a number "
            f"of experts per group of at most {per_group} for router_type='hierarchical'",
        )

    def forward(self, x, logits, real, sequences, compute_losses=True) -> RouterOutput:
        n = logits.shape[0]
        with torch.autocast(device_type=x.device.type, enabled=False):
            group_logits = F.linear(x.float(), self.group_gate.weight.float())  # [N, G]
        group_val, group_idx = group_logits.topk(self.topk_group, dim=-1)  # [N, g]
        group_weight = group_val.softmax(dim=-1)  # [N, g]
        group_size = self.num_experts // self.n_group
        inner = logits.view(n, self.n_group, group_size).gather(1, group_idx[..., None].expand(-1, -1, group_size))  # [N, g, E/G]
        inner_val, inner_idx = inner.topk(self.per_group_k, dim=-1)  # [N, g, k/g]
        topk_weight = (group_weight[..., None] * inner_val.softmax(dim=-1)).reshape(n, -1)  # [N, k]
        topk_idx = (group_idx[..., None] * group_size + inner_idx).reshape(n, -1)  # [N, k]
        aux = RouterAux(topk_idx, real, self.num_experts)
        if compute_losses:
            aux.losses = self._losses(logits, group_logits, topk_idx, real)
        return RouterOutput(topk_idx, topk_weight, aux)

    def _losses(self, logits, group_logits, topk_idx, real) -> dict[str, torch.Tensor]:
        n = logits.shape[0]
        within = logits.view(n, self.n_group, -1).log_softmax(-1)  # [N, G, E/G]
        log_p = (group_logits.log_softmax(-1)[..., None] + within).reshape(n, -1)  # [N, E]; sums to 1 in p
        lb, _, _ = router_losses(log_p, topk_idx, self.num_experts, real)  # softmax(log p) = p
        # z on the experts: per-group logsumexp, averaged over groups, so both levels stay small.
        lse = torch.logsumexp(logits.view(n, self.n_group, -1), dim=-1).square().mean(-1)  # [N]
        lse = lse + torch.logsumexp(group_logits, dim=-1).square()
        z = torch.where(real, lse, 0.0).sum() / real.sum().clamp_min(1)
        return {"load_balancing": lb, "z": z}


class DeepSeekRouter(Router):
    """DeepSeek-V3 gate (layers.md §1a, "V3 gate").

    s = sigmoid(logits); selection uses s + e_score_correction_bias, limited to the topk_group groups with the
    best sum of their top-2 biased scores; weights use the unbiased s of the selected experts, renormalised
    when norm_topk_prob, times routed_scaling_factor. Loss: the complementary sequence-wise balance loss
    L = mean_b sum_i f_i P_i, f_i = E / (k T_b) * #{t in b: i selected}, P_i = mean_t s_{i,t} / sum_j s_{j,t}.
    The bias is not trained by SGD: `BiasUpdateCallback` moves it after each optimizer step from the loads
    this router accumulates in training."""

    FIELDS = {"routed_scaling_factor": 1.0, "router_seq_aux_loss_coef": 1e-4, "bias_update_rate": 1e-3}

    def __init__(self, config):
        super().__init__(config)
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.bias_update_rate = config.bias_update_rate
        self.loss_coefs = {"seq_balance": config.router_seq_aux_loss_coef}
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts))  # [E], saved
        # Real-token loads since the last bias update; not saved (a step boundary resets it).
        self.register_buffer("load_since_update", torch.zeros(self.num_experts, dtype=torch.long), persistent=False)

    @classmethod
    def validate(cls, config) -> None:
        _check_reachable_experts(config)

    def forward(self, x, logits, real, sequences, compute_losses=True) -> RouterOutput:
        scores = logits.sigmoid()  # [N, E]
        topk_idx = self.select(scores)  # [N, k]
        topk_weight = scores.gather(1, topk_idx)  # unbiased: the bias steers selection only
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        topk_weight = topk_weight * self.routed_scaling_factor
        aux = RouterAux(topk_idx, real, self.num_experts)
        if self.training:
            # A checkpointed layer's recompute counts its tokens twice; every expert doubles, so the
            # sign(mean - load) update is unchanged.
            self.load_since_update += aux.tokens_per_expert.detach()
        if compute_losses:
            aux.losses = {"seq_balance": self.sequence_balance_loss(scores, topk_idx, real, sequences)}
        return RouterOutput(topk_idx, topk_weight, aux)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """topk_idx [N, k] from biased scores, inside the topk_group best groups."""
        biased = scores.detach() + self.e_score_correction_bias  # [N, E]
        if self.n_group > 1:
            grouped = biased.view(biased.shape[0], self.n_group, -1)  # [N, G, E/G]
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # [N, G]
            kept = group_score.topk(self.topk_group, dim=-1).indices  # [N, topk_group]
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, kept, True)  # [N, G]
            biased = grouped.masked_fill(~keep[..., None], float("-inf")).view_as(biased)
        return biased.topk(self.top_k, dim=-1).indices

    def sequence_balance_loss(self, scores, topk_idx, real, sequences) -> torch.Tensor:
        """Mean over sequences with real tokens of sum_i f_i P_i, each sequence's statistics summed by id."""
        # Built only here, for the loss: inference never pays for the default.
        ids, count = sequences if sequences is not None else (torch.zeros_like(real, dtype=torch.long), 1)  # [N], S
        keep = real[:, None].float()  # [N, 1]
        selected = torch.zeros_like(scores).scatter(1, topk_idx, 1.0) * keep  # [N, E]
        normed = scores / scores.sum(-1, keepdim=True) * keep  # s' [N, E]
        zeros = scores.new_zeros(count, self.num_experts)  # [S, E]
        counts = zeros.index_add(0, ids, selected)  # [S, E]
        p_sum = zeros.index_add(0, ids, normed)  # [S, E]
        n_real = scores.new_zeros(count).index_add(0, ids, keep[:, 0])  # [S]
        n = n_real.clamp_min(1)[:, None]
        f = self.num_experts / (self.top_k * n) * counts  # [S, E]
        loss = (f * p_sum / n).sum(-1)  # [S]
        has_real = n_real > 0
        return torch.where(has_real, loss, 0.0).sum() / has_real.sum().clamp_min(1)

    @torch.no_grad()
    def update_bias(self, gamma: float | None = None) -> None:
        """Aux-loss-free balancing: bias_e += gamma * sign(mean_load - load_e), loads since the last update."""
        load = self.load_since_update.float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)  # the global load, so every rank moves its copy of the bias alike
        if load.sum() > 0:
            rate = self.bias_update_rate if gamma is None else gamma
            self.e_score_correction_bias += rate * torch.sign(load.mean() - load)
        self.load_since_update.zero_()
