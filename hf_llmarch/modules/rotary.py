"""Rotary position embedding with transformers' scaling types (default, linear, dynamic NTK,
YaRN, llama3, longrope). The module layout (`inv_freq`, `original_inv_freq`, `rope_type`,
`config`, `compute_default_rope_parameters`) is what `PreTrainedModel._init_weights` needs to
rebuild these non-persistent buffers after `from_pretrained` materialises the model off meta."""

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update


class LlmArchRotaryEmbedding(nn.Module):
    inv_freq: torch.Tensor

    def __init__(self, config):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = rotary_dim(config)
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotary_dim(config) -> int:
    """Channels of a head that rotate: partial RoPE (Qwen3-Next, GPT-NeoX) rotates the first
    head_dim * partial_rotary_factor and passes the rest through."""
    return int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim_axis: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key ([B, H, T, D] with head_dim_axis=1, or [B, T, H, D] with 2) by cos/sin
    [B, T, R]; with R < D (partial RoPE) only the first R channels rotate."""
    return apply_rotary_one(query, cos, sin, head_dim_axis), apply_rotary_one(key, cos, sin, head_dim_axis)


def apply_rotary_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim_axis: int = 1) -> torch.Tensor:
    """`apply_rotary` for one tensor (cross-attention turns queries and keys by different positions)."""
    cos, sin = cos.unsqueeze(head_dim_axis), sin.unsqueeze(head_dim_axis)
    width = cos.shape[-1]
    if width == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    return torch.cat([x[..., :width] * cos + rotate_half(x[..., :width]) * sin, x[..., width:]], dim=-1)


def rotary_cos_sin(position_ids: torch.Tensor, dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain RoPE cos/sin [B, T, dim] computed on the fly, for mixers whose head dim differs from attention's."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=position_ids.device) / dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
