"""DeltaNet and Gated DeltaNet (arXiv 2406.06484, 2412.06464; recurrent_mixers.md §7), pattern names
`deltanet` and `gated_deltanet`.

    S <- alpha_t S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t / sqrt(Dk)     (KV layout)

q, k, v come from their projections through one short causal conv over [q; k; v] (SiLU), q and k are
L2-normalised per head (the update then contracts), beta = sigmoid(b_proj x) (x2 with
`delta_allow_neg_eigval`). Gated DeltaNet adds Mamba-2's decay alpha = exp(-exp(A_log) *
softplus(a_proj x + dt_bias)) per value head. With more value heads than key heads (Qwen3-Next's
grouped value heads) each q/k head serves consecutive value heads. The output goes through a per-head
RMSNorm, gated by silu(g_proj x) when `delta_output_gate`, then o_proj. Projections are separate
(fla's layout, so LoRA and tensor-parallel plans see q/k/v); the Qwen3-Next converter regroups its
fused in_proj_qkvz / in_proj_ba rows.

Pads are identity steps (beta = 0 and no decay) and enter the conv as zeros; packed sequences
restart the state and the conv window. Decode state: the conv history [B, 2 Hk Dk + Hv Dv, K-1] and
S [B, Hv, Dk, Dv] fp32.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..modules.norms import GatedRMSNorm, LlmArchRMSNorm
from ..ops.delta_rule import delta_rule
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import at_least_fp32, cached_short_conv, inverse_softplus_dt
from .state import read_recurrent_state, write_recurrent_state

CONFIG_FIELDS = {
    "delta_num_heads": None,  # q/k heads; None: num_attention_heads
    "delta_num_value_heads": None,  # None: delta_num_heads; more: grouped value heads (Qwen3-Next)
    "delta_head_dim": None,  # q/k head dim; None: hidden_size // delta_num_heads
    "delta_value_head_dim": None,  # None: delta_head_dim
    "delta_conv_size": 4,
    "delta_output_gate": True,  # silu(g_proj x) gates the output norm (Gated DeltaNet, Qwen3-Next)
    "delta_allow_neg_eigval": False,  # beta in (0, 2): the transition may reflect (arXiv 2411.12537)
    "delta_chunk_size": 64,
    "delta_mode": "auto",  # the delta-rule op's path: auto, chunk, recurrent, naive, fla
}
DELTA_MODES = ("auto", "chunk", "recurrent", "naive", "fla")
L2_NORM_EPS = 1e-6
DT_INIT_RANGE = (1e-3, 1e-1, 1e-4)  # dt_min, dt_max, floor (fla's GatedDeltaNet, Mamba-2)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """x * rsqrt(sum x^2 + eps) over the last dim, in fp32 or wider (fla's and Qwen3-Next's form)."""
    wide = at_least_fp32(x)
    return wide * torch.rsqrt(wide.pow(2).sum(-1, keepdim=True) + L2_NORM_EPS)


class LlmArchDeltaNet(nn.Module):
    block_attr = "delta_net"
    config_fields = CONFIG_FIELDS
    gated = False  # Gated DeltaNet's decay

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_value_heads = config.delta_num_heads, config.delta_num_value_heads
        self.head_dim, self.value_head_dim = config.delta_head_dim, config.delta_value_head_dim
        self.key_dim, self.value_dim = self.num_heads * self.head_dim, self.num_value_heads * self.value_head_dim
        self.chunk_size, self.mode = config.delta_chunk_size, config.delta_mode
        self.beta_scale = 2.0 if config.delta_allow_neg_eigval else 1.0
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.value_dim, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_value_heads, bias=False)
        conv_dim = 2 * self.key_dim + self.value_dim
        self.conv1d = nn.Conv1d(
            conv_dim, conv_dim, config.delta_conv_size, groups=conv_dim, padding=config.delta_conv_size - 1, bias=False
        )
        if self.gated:
            self.a_proj = nn.Linear(hidden, self.num_value_heads, bias=False)
            self.dt_bias = nn.Parameter(torch.ones(self.num_value_heads))
            self.A_log = nn.Parameter(torch.empty(self.num_value_heads))
        self.output_gate = config.delta_output_gate
        if self.output_gate:
            self.g_proj = nn.Linear(hidden, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.value_head_dim, eps=config.norm_eps, norm_before_gate=True)
        else:
            self.o_norm = LlmArchRMSNorm(self.value_head_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden, bias=False)

    @staticmethod
    def validate(config) -> None:
        if getattr(config, "delta_num_heads", None) is None:
            config.delta_num_heads = config.num_attention_heads
        check_positive_ints(config, "delta_num_heads")
        if getattr(config, "delta_head_dim", None) is None:
            if config.hidden_size % config.delta_num_heads:
                raise ValueError(
                    f"delta_num_heads={config.delta_num_heads} does not divide hidden_size={config.hidden_size}: "
                    "set delta_head_dim"
                )
            config.delta_head_dim = config.hidden_size // config.delta_num_heads
        if getattr(config, "delta_num_value_heads", None) is None:
            config.delta_num_value_heads = config.delta_num_heads
        if getattr(config, "delta_value_head_dim", None) is None:
            config.delta_value_head_dim = config.delta_head_dim
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "delta_num_value_heads", "delta_head_dim", "delta_value_head_dim", "delta_chunk_size")
        if config.delta_num_value_heads % config.delta_num_heads:
            raise ValueError(
                f"delta_num_value_heads={config.delta_num_value_heads} is not a multiple of delta_num_heads="
                f"{config.delta_num_heads}: each q/k head serves a whole number of value heads"
            )
        if not isinstance(config.delta_conv_size, int) or config.delta_conv_size < 2:
            raise ValueError(f"delta_conv_size={config.delta_conv_size!r} must be an integer >= 2 (the short conv's width)")
        if config.delta_mode not in DELTA_MODES:
            raise ValueError(f"delta_mode={config.delta_mode!r} is unknown; valid: {list(DELTA_MODES)}")

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """Gated DeltaNet's decay as fla's and Mamba-2's: A = U(0, 16) per value head and dt_bias the
        inverse softplus of a log-uniform dt in [1e-3, 0.1]. (Qwen3-Next's own init, dt_bias = 1, decays
        every head by ~exp(-1.3 A) per token at the start: on MQAR at width 64 that model never left
        chance in 1500 steps, this one reached 0.99 / 0.99 / 0.91 at 4 / 8 / 16 pairs.)"""
        if self.gated:
            init.copy_(self.A_log, torch.empty(self.num_value_heads).uniform_(0, 16).clamp(min=1e-4).log())
            init.copy_(self.dt_bias, inverse_softplus_dt(self.num_value_heads, *DT_INIT_RANGE))

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], dim=-1)
        mask = None if attention_mask is None else attention_mask[..., None].to(qkv.dtype)  # [B, T, 1]
        if mask is not None:
            qkv = qkv * mask  # pads enter the conv as zeros
        qkv = F.silu(cached_short_conv(self.conv1d, qkv, attention_mask, cache, self.layer_idx, sequence_starts))
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = (self._value_heads(l2_normalise(x.view(batch, seq_len, self.num_heads, self.head_dim))) for x in (q, k))
        v = v.view(batch, seq_len, self.num_value_heads, self.value_head_dim)  # [B, T, Hv, Dv]
        beta = self.beta_scale * torch.sigmoid(at_least_fp32(self.b_proj(hidden_states)))  # [B, T, Hv]
        log_decay = self._log_decay(hidden_states) if self.gated else None
        if mask is not None:  # a pad neither writes nor decays
            beta = beta * mask
            log_decay = None if log_decay is None else log_decay * mask
        out, state = delta_rule(
            q, k, v, beta, log_decay, scale=self.head_dim**-0.5, initial_state=read_recurrent_state(cache, self.layer_idx),
            mode=self.mode, chunk_size=self.chunk_size, reset=sequence_starts,
        )
        write_recurrent_state(cache, self.layer_idx, state)
        if self.output_gate:
            gate = self.g_proj(hidden_states).view(batch, seq_len, self.num_value_heads, self.value_head_dim)
            out = self.o_norm(out, gate)
        else:
            out = self.o_norm(out)
        return self.o_proj(out.reshape(batch, seq_len, self.value_dim)), None

    def _value_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, Hk, D] -> [B, T, Hv, D]: each q/k head serves its consecutive value heads."""
        ratio = self.num_value_heads // self.num_heads
        return x if ratio == 1 else x.repeat_interleave(ratio, dim=2)

    def _log_decay(self, hidden_states) -> torch.Tensor:
        """g = -exp(A_log) * softplus(a_proj x + dt_bias) [B, T, Hv], in fp32 or wider."""
        a = at_least_fp32(self.a_proj(hidden_states)) + at_least_fp32(self.dt_bias)
        return -torch.exp(at_least_fp32(self.A_log)) * F.softplus(a)


class LlmArchGatedDeltaNet(LlmArchDeltaNet):
    """Gated DeltaNet (`gated_deltanet`): the delta rule with a data-dependent decay per value head."""

    gated = True
