"""RWKV-7 "Goose" time mix (recurrent_mixers.md §6b; fla's RWKV7Attention, BlinkDL's x070), pattern
name `rwkv7`.

Token shift x_* = x + (x_prev - x) * x_* for * in r, w, k, v, a, g; r, k, v = W x_*;
decay log d = -e^-0.5 sigmoid(w0 + tanh(x_w W1) W2) per channel (in (-0.61, 0), so the chunked op's
exps stay bounded); in-context rate a = sigmoid(a0 + x_a A1 A2); gate g = sigmoid(x_g G1) G2;
kappa = L2norm_head(k * k_k), k~ = k (1 + (a - 1) k_a). Value residual: the first rwkv7 layer's v is
kept for the forward, and later layers move towards it, v <- v + (v_first - v) sigmoid(v0 + x_v V1 V2).
The state follows the generalised delta rule (`ops/dplr_delta`, KV layout)
S_t = diag(d_t) S_{t-1} - kappa (a kappa)^T S_{t-1} ... written with a = -kappa, b = kappa * a
(the removal reads the undecayed state), o_t = S_t^T r_t; then a per-head GroupNorm, the "bonus"
(sum_d r k~ r_k) v, the gate, and o_proj. Names follow fla (x_r .. x_g, k_k, k_a, r_k, r_proj,
k_proj, v_proj, o_proj, w_lora, a_lora, v_lora, g_lora, g_norm).

Pads are identity steps (no decay, no write, no removal) and enter the token shift as zeros; packed
sequences restart the state. Decode state: the two token-shift inputs (time and channel mix) and
S [B, H, Dk, Dv] fp32.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..ops.dplr_delta import dplr_delta
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import at_least_fp32
from .state import read_recurrent_state, write_recurrent_state
from .token_shift import shift_tokens, zero_pads

CONFIG_FIELDS = {
    "rwkv7_head_dim": 64,
    # Low-rank widths of the data-dependent decay, in-context rate, value residual and gate; None:
    # BlinkDL's rule from hidden_size (max(32, round(c * hidden**p / 32) * 32)).
    "rwkv7_decay_low_rank": None,
    "rwkv7_a_low_rank": None,
    "rwkv7_v_low_rank": None,
    "rwkv7_gate_low_rank": None,
    "rwkv7_chunk_size": 16,
    "rwkv7_mode": "auto",  # the DPLR op's path: auto, chunk, recurrent, naive, fla
}
LOW_RANK_RULE = {"decay": (1.8, 0.5), "a": (1.8, 0.5), "v": (1.3, 0.5), "gate": (0.6, 0.8)}
DPLR_MODES = ("auto", "chunk", "recurrent", "naive", "fla")
MAX_LOG_DECAY = math.exp(-0.5)  # |log d| < e^-0.5 per step
GROUP_NORM_EPS_PER_DIM = 1e-5  # BlinkDL's ln_x: eps = head_dim * 1e-5
SHIFTED = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


class LowRank(nn.Module):
    """x -> up(act(down(x))) (fla's LoRA): the data-dependent part of a per-channel parameter."""

    def __init__(self, dim: int, rank: int, activation: nn.Module | None, bias: bool = True):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False), activation or nn.Identity(), nn.Linear(rank, dim, bias=bias))

    def forward(self, x):
        return self.lora(x)


class LlmArchTimeMix7(nn.Module):
    block_attr = "time_mix"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.num_layers = layer_idx, config.num_hidden_layers
        self.is_first = layer_idx == config.mixer_types.index("rwkv7")  # keeps v_first for the others
        hidden, self.head_dim = config.hidden_size, config.rwkv7_head_dim
        self.num_heads = hidden // self.head_dim
        self.chunk_size, self.mode = config.rwkv7_chunk_size, config.rwkv7_mode
        for name in SHIFTED:
            setattr(self, name, nn.Parameter(torch.empty(1, 1, hidden)))
        self.k_k = nn.Parameter(torch.empty(hidden))
        self.k_a = nn.Parameter(torch.empty(hidden))
        self.r_k = nn.Parameter(torch.empty(self.num_heads, self.head_dim))
        self.r_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.w_lora = LowRank(hidden, config.rwkv7_decay_low_rank, nn.Tanh())
        self.a_lora = LowRank(hidden, config.rwkv7_a_low_rank, None)
        if not self.is_first:
            self.v_lora = LowRank(hidden, config.rwkv7_v_low_rank, None)
        self.g_lora = LowRank(hidden, config.rwkv7_gate_low_rank, nn.Sigmoid(), bias=False)
        self.g_norm = nn.GroupNorm(self.num_heads, hidden, eps=self.head_dim * GROUP_NORM_EPS_PER_DIM)

    @staticmethod
    def validate(config) -> None:
        if "rwkv7" not in config.mixer_types:
            raise ValueError(f"mixer_types={config.mixer_types}: rwkv7 cannot sit inside par(): its value residual runs down the stack")
        fill_config_defaults(config, {"rwkv7_head_dim": CONFIG_FIELDS["rwkv7_head_dim"]})
        check_positive_ints(config, "rwkv7_head_dim")
        if config.hidden_size % config.rwkv7_head_dim:
            raise ValueError(
                f"rwkv7_head_dim={config.rwkv7_head_dim} does not divide hidden_size={config.hidden_size}: RWKV-7 splits "
                "the channels into heads of this size"
            )
        for part, (scale, power) in LOW_RANK_RULE.items():
            field = f"rwkv7_{part}_low_rank"
            if getattr(config, field, None) is None:
                setattr(config, field, max(32, round(scale * config.hidden_size**power / 32) * 32))
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, *(f"rwkv7_{part}_low_rank" for part in LOW_RANK_RULE), "rwkv7_chunk_size")
        if config.rwkv7_mode not in DPLR_MODES:
            raise ValueError(f"rwkv7_mode={config.rwkv7_mode!r} is unknown; valid: {list(DPLR_MODES)}")

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """BlinkDL's x070 init: shift mixes by channel and depth, decays from fast to slow over channels,
        a0 = 0, v0 = 1, k_k = 0.85, k_a = 1, r_k = -0.04; the low-rank down-projections start at zero."""
        hidden = self.k_k.shape[0]
        depth = self.layer_idx / max(self.num_layers - 1, 1)  # 0 .. 1
        remaining = 1.0 - self.layer_idx / self.num_layers  # 1 .. ~0
        channel = torch.arange(hidden, dtype=torch.float32)[None, None] / hidden
        for name, power in zip(SHIFTED, (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            init.copy_(getattr(self, name), 1.0 - channel ** (power * remaining))
        speed = -7 + 5 * (torch.arange(hidden, dtype=torch.float32) / max(hidden - 1, 1)) ** (0.85 + depth**0.5)
        init.copy_(self.w_lora.lora[2].bias, speed + 0.5)
        init.zeros_(self.a_lora.lora[2].bias)
        init.constant_(self.k_k, 0.85)
        init.ones_(self.k_a)
        init.constant_(self.r_k, -0.04)
        for lora in (self.w_lora, self.a_lora, self.g_lora) + ((self.v_lora,) if not self.is_first else ()):
            init.zeros_(lora.lora[0].weight)
        if not self.is_first:
            init.ones_(self.v_lora.lora[2].bias)

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, shared_across_layers=None, **kwargs):
        """`shared_across_layers`: a dict living for one forward of the stack, carrying v_first."""
        batch, seq_len, hidden = hidden_states.shape
        x = zero_pads(hidden_states, attention_mask)
        delta = shift_tokens(x, cache, self.layer_idx, 0, attention_mask, sequence_starts) - x
        xr, xw, xk, xv, xa, xg = (x + delta * getattr(self, name) for name in SHIFTED)
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        v = self._value_residual(v, xv, shared_across_layers)
        log_decay = -MAX_LOG_DECAY * torch.sigmoid(at_least_fp32(self.w_lora(xw)))
        rate = torch.sigmoid(self.a_lora(xa))
        heads = (batch, seq_len, self.num_heads, self.head_dim)
        kappa = F.normalize(at_least_fp32((k * self.k_k).view(heads)), dim=-1).to(k.dtype)  # BlinkDL's and fla's norm
        k = k * (1 + (rate - 1) * self.k_a)
        if attention_mask is not None:  # a pad neither decays, writes nor removes
            real = attention_mask[..., None].to(k.dtype)
            k, kappa, log_decay = k * real, kappa * real[..., None], log_decay * real
        rate_heads = rate.view(heads)
        out, state = dplr_delta(
            r.view(heads), k.view(heads), v.view(heads), -kappa, kappa * rate_heads, log_decay.view(heads),
            initial_state=read_recurrent_state(cache, self.layer_idx), mode=self.mode, chunk_size=self.chunk_size,
            reset=sequence_starts,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        out = self.g_norm(out.reshape(-1, hidden)).view(batch, seq_len, hidden)
        bonus = (r.view(heads) * k.view(heads) * self.r_k).sum(-1, keepdim=True) * v.view(heads)  # [B, T, H, D]
        return self.o_proj((out + bonus.reshape(batch, seq_len, hidden)) * self.g_lora(xg)), None

    def _value_residual(self, v, xv, shared):
        """The first rwkv7 layer stores its v; later ones interpolate towards it."""
        if shared is None:
            raise ValueError("rwkv7 needs the stack's shared_across_layers dict (the value residual); call it through the model")
        if self.is_first:
            shared["v_first"] = v
            return v
        return v + (shared["v_first"] - v) * torch.sigmoid(self.v_lora(xv))
