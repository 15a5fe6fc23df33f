"""DeepSeek Sparse Attention (DeepSeek-V3.2; layers.md §2g), pattern name `dsa`: MLA whose queries
each attend only to the `index_topk` keys a lightning indexer scores highest.

    I[t, s] = sum_j w_j(x_t) * ReLU(q_j(t) . k(s)) / sqrt(d_I),   w = weights_proj(x) / sqrt(H_I)

q_j from the query latent (wq_b of q_a_layernorm(q_a_proj(x))), one shared key k = LayerNorm(wk(x))
per token, RoPE (half-split, unlike MLA's interleaved pairs) on their first qk_rope_head_dim dims.
The indexer keys live in transformers' indexed cache layer beside the latent (`update_indexer`),
so generate() keeps them. The selection is a mask on top of the causal one; the attention itself
is MLA's, expanded or absorbed. It runs at reference speed (scores for every cached key), and with
index_topk >= the context it is dense MLA exactly. Parameter names are transformers'
DeepseekV32Indexer's (`indexer.wq_b`, `wk`, `k_norm`, `weights_proj`).
"""

import torch
from torch import nn

from ..modules.rotary import apply_rotary
from .mla import LlmArchMLA
from .registry import check_positive_ints

CONFIG_FIELDS = {**LlmArchMLA.config_fields, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}


class LlmArchIndexer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.head_dim, self.topk = config.index_n_heads, config.index_head_dim, config.index_topk
        self.rope_dim = config.qk_rope_head_dim
        self.wq_b = nn.Linear(config.q_lora_rank, self.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(config.hidden_size, self.heads, bias=False)

    @torch.no_grad()  # the selection is discrete; the indexer trains by its own loss, not through the LM's
    def forward(self, hidden_states, q_resid, position_embeddings, allowed, cache=None) -> torch.Tensor:
        """[B, T, Tk] bool: the keys each query may attend to, `allowed` [B, T, Tk] (causal and padding)
        narrowed to the index_topk best-scored."""
        batch, seq_len, _ = hidden_states.shape
        query = self.wq_b(q_resid).view(batch, seq_len, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        key = self.k_norm(self.wk(hidden_states))[:, None]  # [B, 1, T, D]
        cos, sin = position_embeddings
        q_rot, k_rot = apply_rotary(query[..., : self.rope_dim], key[..., : self.rope_dim], cos, sin)
        query = torch.cat([q_rot, query[..., self.rope_dim :]], dim=-1)
        key = torch.cat([k_rot, key[..., self.rope_dim :]], dim=-1)[:, 0]  # [B, T, D]
        if cache is not None:
            key = cache.update_indexer(key, self.layer_idx)  # [B, Tk, D]
        scores = torch.relu(query.float() @ key.float().transpose(-1, -2)[:, None]) * self.head_dim**-0.5  # [B, H, T, Tk]
        weights = self.weights_proj(hidden_states).float() * self.heads**-0.5  # [B, T, H]
        allowed = allowed.expand(batch, seq_len, -1)
        index = torch.einsum("bth,bhts->bts", weights, scores).masked_fill(~allowed, float("-inf"))
        if self.topk >= index.shape[-1]:
            return allowed
        chosen = index.topk(self.topk, dim=-1).indices  # [B, T, k]
        return allowed & torch.zeros_like(allowed).scatter(-1, chosen, True)


class LlmArchDSA(LlmArchMLA):
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.indexer = LlmArchIndexer(config, layer_idx)

    @staticmethod
    def validate(config) -> None:
        LlmArchMLA.validate(config)
        for name in ("index_n_heads", "index_head_dim", "index_topk"):
            if getattr(config, name, None) is None:
                setattr(config, name, CONFIG_FIELDS[name])
        check_positive_ints(config, "index_n_heads", "index_head_dim", "index_topk")
        if config.q_lora_rank is None:
            raise ValueError("q_lora_rank=None: the DSA indexer reads the query latent, so `dsa` layers need a q_lora_rank")
        if config.index_head_dim < config.qk_rope_head_dim:
            raise ValueError(
                f"index_head_dim={config.index_head_dim} must be at least qk_rope_head_dim={config.qk_rope_head_dim}: "
                "RoPE rotates the indexer's first qk_rope_head_dim dims"
            )

    def select_keys(self, hidden_states, q_resid, attention_mask, position_embeddings, cache, kv_len: int):
        """The layer's 4D mask narrowed to the indexer's choice, in the mask's own form (bool, or
        additive for eager attention)."""
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise ValueError(
                f"`dsa` layers need a dense attention mask (attn_implementation 'eager' or 'sdpa'), got "
                f"{type(attention_mask).__name__}: the indexer's selection is applied as a mask"
            )
        allowed = _allowed(attention_mask, hidden_states.shape[1], kv_len, hidden_states.device)  # [B, T, Tk]
        selected = self.indexer(hidden_states, q_resid, position_embeddings, allowed, cache)[:, None]  # [B, 1, T, Tk]
        if attention_mask is None or attention_mask.dtype == torch.bool:
            return selected
        return torch.zeros((), dtype=attention_mask.dtype, device=selected.device).masked_fill(
            ~selected, torch.finfo(attention_mask.dtype).min
        )


def _allowed(attention_mask, seq_len: int, kv_len: int, device) -> torch.Tensor:
    """[B or 1, T, Tk] bool from the layer's 4D mask (bool, or additive with 0 = attend) or, without
    one, causal with the queries last."""
    if attention_mask is None:
        return torch.ones(seq_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - seq_len)[None]
    mask = attention_mask[:, 0]
    return mask if mask.dtype == torch.bool else mask == 0
