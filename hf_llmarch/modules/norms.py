"""Normalisation layers. Class names keep transformers' `RMSNorm`/`LayerNorm` substrings so that
`PreTrainedModel._init_weights` recognises and re-initialises them."""

import torch
from torch import nn


class LlmArchRMSNorm(nn.Module):
    """RMSNorm scaled by `weight`, or with `unit_offset` by 1 + weight (zero-centred: Qwen3-Next, Gemma;
    the model's `_init_weights` then starts the weight at 0)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size) if unit_offset else torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.unit_offset = unit_offset

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 variance underflows; an fp64 oracle keeps fp64), scale in the input
        # dtype, as Llama does.
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float64 if input_dtype == torch.float64 else torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.unit_offset:  # Qwen3-Next scales in fp32, then casts
            return (hidden_states * (1.0 + self.weight.to(hidden_states.dtype))).to(input_dtype)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}" + (", 1 + weight" if self.unit_offset else "")


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMS-normalise each of `groups` equal slices of the last dim, in fp32,
    and scale, with the gate silu(z) applied before the norm (Mamba-2, Granite) or after it
    (`norm_before_gate=True`, an option of Falcon-H1)."""

    def __init__(self, hidden_size: int, groups: int = 1, eps: float = 1e-6, norm_before_gate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.groups = groups
        self.norm_before_gate = norm_before_gate

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        wide = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        hidden_states, gate = hidden_states.to(wide), nn.functional.silu(gate.to(wide))
        if not self.norm_before_gate:
            hidden_states = hidden_states * gate
        grouped = hidden_states.unflatten(-1, (self.groups, -1))  # [..., G, D/G]
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        if self.norm_before_gate:  # Falcon-H1 scales and gates in fp32, then casts
            return (self.weight * grouped.flatten(-2) * gate).to(input_dtype)
        return self.weight * grouped.flatten(-2).to(input_dtype)  # as transformers' Mamba-2: cast, then scale


def build_norm(config, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps)
    return LlmArchRMSNorm(dim, eps=config.norm_eps, unit_offset=config.norm_unit_offset)
