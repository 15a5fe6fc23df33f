"""Multi-head latent attention (DeepSeek-V2/V3; layers.md §2a-2b), pattern name `mla`.

q = q_b(RMSNorm(q_a(x))) (or a full q_proj when q_lora_rank is None), split per head into
q_nope [dn] and q_rope [dr]; kv_a_proj_with_mqa(x) = [c_kv (R) ; k_rope (dr)], c_kv -> RMSNorm; RoPE
on q_rope and on the one k_rope every head shares (DeepSeek's interleaved pairs when
`rope_interleave`). The cache holds only c_kv and k_rope, R + dr values per token per layer, as a
one-head key/value pair of transformers' cache layer (the layout transformers' DeepseekV3 uses).

Two ways to attend, the same function:
- expand (training, a prefill with an empty cache): kv_b_proj(c_kv) gives per-head k_nope and v;
  attention runs through transformers' attention interface (eager, sdpa, flex, flash);
- absorb (decode, and short chunks after cached tokens): W_UK is folded into the query and W_UV
  applied after the attention, so the cache is read once in latent space and never expanded per
  head (`ops/mla`: torch, or our Triton decode kernel on CUDA). A long chunk after cached tokens (a
  chunked prefill) expands instead, where that costs fewer FLOPs: per cached key, absorbing costs
  Tq (2R + dr) multiply-adds, expanding R (dn + dv) + Tq (dn + dr + dv), so absorbing wins below
  Tq = R (dn + dv) / (2R - dn - dv) (171 for DeepSeek-V3).
`mla_mode` forces one ("expand" is what transformers' DeepseekV3 does at every step). The
softmax scale is (dn + dr)^-0.5, times mscale^2 under YaRN with `mscale_all_dim`, as DeepSeek's.
Parameter names are transformers' DeepseekV3Attention's.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..modules.norms import LlmArchRMSNorm
from ..modules.rotary import apply_rotary
from ..ops.mla import MLA_KERNELS, mla_latent_attention
from .attention import eager_attention_forward
from .registry import check_positive_ints, fill_config_defaults

CONFIG_FIELDS = {
    "q_lora_rank": None,  # None: a full q_proj (DeepSeek-V2-Lite); else the rank of q_a_proj
    "kv_lora_rank": 512,  # R, the latent cached per token
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "rope_interleave": True,  # DeepSeek's checkpoints pair adjacent RoPE dims
    # The RoPE part as this many blocks of head_dim, each rotated as one head (1: DeepSeek). A model made
    # from GQA by `mla_surgery` keeps each KV group's keys rotating exactly this way.
    "mla_rope_groups": 1,
    "mla_latent_norm": True,  # kv_a_layernorm on the latent (DeepSeek); off for an exact GQA conversion
    "mla_mode": "auto",  # auto (absorb once tokens are cached), expand, absorb
    "mla_kernel": "auto",  # the absorbed path: auto, torch, triton (env LLMARCH_MLA_KERNEL)
}
MLA_MODES = ("auto", "expand", "absorb")
LATENT_NORM_EPS = 1e-6  # DeepSeek's q_a / kv_a norms keep the default eps whatever rms_norm_eps says


class LlmArchMLA(nn.Module):
    block_attr = "self_attn"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config  # the attention interface reads config._attn_implementation
        self.layer_idx = layer_idx
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.latent_dim = config.v_head_dim, config.kv_lora_rank
        self.qk_dim = self.nope_dim + self.rope_dim
        heads, bias = config.num_attention_heads, config.attention_bias
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(config.hidden_size, heads * self.qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = LlmArchRMSNorm(config.q_lora_rank, eps=LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * self.qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.latent_dim + self.rope_dim, bias=bias)
        if config.mla_latent_norm:
            self.kv_a_layernorm = LlmArchRMSNorm(self.latent_dim, eps=LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.latent_dim, heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(heads * self.v_dim, config.hidden_size, bias=bias)
        self.scaling = config.attention_multiplier or mla_softmax_scale(config)
        self.rope_groups = config.mla_rope_groups
        self.num_key_value_groups = 1  # the expanded keys and values have every head
        self.attention_dropout = config.attention_dropout
        self.is_causal = config.attention_mask_kind != "bidirectional"  # sdpa reads it when the mask is None
        self.interleave, self.mode, self.kernel = config.rope_interleave, config.mla_mode, config.mla_kernel
        expand_cost = 2 * self.latent_dim - self.nope_dim - self.v_dim  # per query, beyond the shared part
        self.absorb_below = math.inf if expand_cost <= 0 else self.latent_dim * (self.nope_dim + self.v_dim) / expand_cost

    @staticmethod
    def validate(config) -> None:
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "mla_rope_groups")
        if config.q_lora_rank is not None:
            check_positive_ints(config, "q_lora_rank")
        if not isinstance(config.qk_nope_head_dim, int) or config.qk_nope_head_dim < 0:
            raise ValueError(f"qk_nope_head_dim={config.qk_nope_head_dim!r} must be a non-negative integer")
        block, rest = divmod(config.qk_rope_head_dim, config.mla_rope_groups)
        if rest or block % 2:
            raise ValueError(
                f"qk_rope_head_dim={config.qk_rope_head_dim} must be even: RoPE rotates pairs of dims"
                if config.mla_rope_groups == 1
                else f"qk_rope_head_dim={config.qk_rope_head_dim} must split into mla_rope_groups={config.mla_rope_groups} "
                "blocks of an even width"
            )
        if config.mla_mode not in MLA_MODES:
            raise ValueError(f"mla_mode={config.mla_mode!r} is unknown; valid: {list(MLA_MODES)}")
        if config.mla_kernel not in MLA_KERNELS:
            raise ValueError(f"mla_kernel={config.mla_kernel!r} is unknown; valid: {list(MLA_KERNELS)}")
        if config.head_dim != block:
            # The backbone's rotary tables are head_dim wide; in MLA only the RoPE part (block by block) rotates.
            if any(m in ("attn", "swa") or m.startswith("par(") for m in config.mixer_types):
                raise ValueError(
                    f"head_dim={config.head_dim} must equal the RoPE block qk_rope_head_dim / mla_rope_groups={block} in "
                    "a stack with MLA and other attention: the rotary tables are shared; set head_dim to it"
                )
            config.head_dim = block

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        q_latent_in = self.q_a_layernorm(self.q_a_proj(hidden_states)) if hasattr(self, "q_a_proj") else None
        query = self.q_proj(hidden_states) if q_latent_in is None else self.q_b_proj(q_latent_in)
        query = query.view(batch, seq_len, -1, self.qk_dim).transpose(1, 2)  # [B, H, T, dn+dr]
        q_nope, q_rope = query.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(hidden_states).split([self.latent_dim, self.rope_dim], dim=-1)
        if hasattr(self, "kv_a_layernorm"):
            latent = self.kv_a_layernorm(latent)
        latent = latent.view(batch, 1, seq_len, self.latent_dim)  # one "head": the cache layout
        k_rope = k_rope.view(batch, 1, seq_len, self.rope_dim)
        q_rope, k_rope = self._rotate(q_rope, k_rope, position_embeddings)
        absorb = self._absorbs(cache, seq_len, attention_mask)  # decided before the cache grows
        if cache is not None:
            latent, k_rope = cache.update(latent, k_rope, self.layer_idx)  # [B, 1, Tk, R], [B, 1, Tk, dr]
        attention_mask = self.select_keys(hidden_states, q_latent_in, attention_mask, position_embeddings, cache, latent.shape[2])
        if absorb:
            out, weights = self._absorbed(q_nope, q_rope, latent, k_rope, attention_mask), None
        else:
            out, weights = self._expanded(q_nope, q_rope, latent, k_rope, attention_mask, **kwargs)
        return self.o_proj(out.reshape(batch, seq_len, -1)), weights

    def select_keys(self, hidden_states, q_latent_in, attention_mask, position_embeddings, cache, kv_len: int):
        """The mask the attention applies; sparse variants (`dsa`) narrow it to the keys they choose."""
        return attention_mask

    def _rotate(self, q_rope, k_rope, position_embeddings):
        cos, sin = position_embeddings
        if self.rope_groups > 1:  # [B, H, T, G, d]: each block rotates as a head of its own
            q_rope, k_rope = q_rope.unflatten(-1, (self.rope_groups, -1)), k_rope.unflatten(-1, (self.rope_groups, -1))
            cos, sin = cos[..., None, :], sin[..., None, :]
        if self.interleave:  # adjacent pairs -> halves, so the standard rotation applies
            q_rope, k_rope = deinterleave(q_rope), deinterleave(k_rope)
        q_rope, k_rope = apply_rotary(q_rope, k_rope, cos, sin)
        return (q_rope.flatten(-2), k_rope.flatten(-2)) if self.rope_groups > 1 else (q_rope, k_rope)

    def _absorbs(self, cache, seq_len: int, attention_mask) -> bool:
        if self.mode != "auto":
            return self.mode == "absorb"
        if cache is None or not (attention_mask is None or isinstance(attention_mask, torch.Tensor)):
            return False  # training, or a flex BlockMask the latent path cannot read
        return seq_len == 1 or (seq_len < self.absorb_below and cache.get_seq_length(self.layer_idx) > 0)

    def _absorbed(self, q_nope, q_rope, latent, k_rope, attention_mask):
        """[B, T, H, dv]: attention in latent space, the cache read once and never expanded."""
        weight = self.kv_b_proj.weight.view(-1, self.nope_dim + self.v_dim, self.latent_dim)  # [H, dn+dv, R]
        w_uk, w_uv = weight.split([self.nope_dim, self.v_dim], dim=1)
        q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)  # [B, H, T, R]
        o_latent = mla_latent_attention(
            q_latent, q_rope, latent[:, 0], k_rope[:, 0], attention_mask, self.scaling, self.kernel
        )
        return torch.einsum("bhtr,hvr->bthv", o_latent, w_uv)

    def _expanded(self, q_nope, q_rope, latent, k_rope, attention_mask, **kwargs):
        """([B, T, H, dv], weights): per-head keys and values up-projected from the latent."""
        batch, _, kv_len, _ = latent.shape
        kv = self.kv_b_proj(latent[:, 0]).view(batch, kv_len, -1, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, value = kv.split([self.nope_dim, self.v_dim], dim=-1)  # [B, H, Tk, dn], [B, H, Tk, dv]
        key = torch.cat([k_nope, k_rope.expand(-1, k_nope.shape[1], -1, -1)], dim=-1)
        query = torch.cat([q_nope, q_rope], dim=-1)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return attention(
            self, query, key, value, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """[..., d] with RoPE pairs (x0, x1), (x2, x3), ... -> [x0, x2, ..., x1, x3, ...], so the half
    rotation rotates each original pair (transformers' apply_rotary_pos_emb_interleave)."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def mla_softmax_scale(config) -> float:
    """(dn + dr)^-0.5, times mscale^2 = (0.1 * mscale_all_dim * ln(factor) + 1)^2 under YaRN (DeepSeek's)."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    rope = config.rope_parameters or {}
    factor, mscale_all_dim = rope.get("factor", 1.0), rope.get("mscale_all_dim", 0)
    if rope.get("rope_type", "default") != "default" and mscale_all_dim and factor > 1:
        mscale = 0.1 * mscale_all_dim * math.log(factor) + 1.0
        scale *= mscale * mscale
    return scale
