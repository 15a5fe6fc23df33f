"""Dense feed-forward blocks: SwiGLU-style (gate/up/down, LLaMA) and plain (up/act/down, GPT-2)."""

import torch
from torch import nn
from transformers.activations import ACT2FN


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); with `multipliers` (Falcon-H1's muP) the gate pre-activation and the
    output are scaled."""

    def __init__(self, config, intermediate_size: int | None = None, multipliers: list[float] | None = None):
        super().__init__()
        inner = intermediate_size or config.intermediate_size
        self.multipliers = None if multipliers is None or list(multipliers) == [1.0, 1.0] else tuple(multipliers)
        self.gate_proj = nn.Linear(config.hidden_size, inner, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, inner, bias=config.mlp_bias)
        self.down_proj = nn.Linear(inner, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multipliers is None:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        gate_multiplier, down_multiplier = self.multipliers
        return self.down_proj(self.act_fn(self.gate_proj(x) * gate_multiplier) * self.up_proj(x)) * down_multiplier


class PlainMLP(nn.Module):
    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        inner = intermediate_size or config.intermediate_size
        self.up_proj = nn.Linear(config.hidden_size, inner, bias=config.mlp_bias)
        self.down_proj = nn.Linear(inner, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


def build_mlp(config, intermediate_size: int | None = None) -> nn.Module:
    """The dense FFN of the config's kind, `intermediate_size` wide (default config.intermediate_size)."""
    return (GatedMLP if config.mlp_gated else PlainMLP)(config, intermediate_size)


def build_layer_mlp(config) -> nn.Module:
    """A layer's dense FFN: the config's kind and width, with its muP multipliers (a shared expert has none)."""
    if config.mlp_gated:
        return GatedMLP(config, multipliers=config.mlp_multipliers)
    return PlainMLP(config)
