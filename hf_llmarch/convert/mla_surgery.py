"""GQA / MHA -> MLA surgery (`llmarch mla-convert`), TransMLA-style, data-free.

Per attention layer with H query heads, G KV groups of head dim d (RoPE on halves of each head):
1. RoRoPE. RoPE turns the dims (i, i + d/2) of every group by the same angle, so any orthogonal mix
   of the G groups, the same for both dims of pair i, commutes with it. Per pair i, the mix M_i is
   the PCA of the G key rows (their Gram matrix): virtual key heads ordered by energy. Each query
   head, in the mixed basis, reads every virtual head (q'_{h,j} = M_i[j, g(h)] q_h), so scores are
   unchanged exactly.
2. The first `rope_heads` virtual heads keep RoPE: they become MLA's shared RoPE key (one block of d
   per virtual head, `mla_rope_groups`). The others lose it and join the latent (lossy below G).
3. Joint SVD of [the RoPE-less virtual keys ; the stacked W_V] to `kv_lora_rank`: the latent is
   S_r V_r^T x, and W_UK / W_UV are U_r's rows (lossy below the stacked height).
No latent norm, no q compression; the softmax scale stays d^-0.5. With rope_heads = G and the full
rank the logits equal the source's (`tests/convert/test_mla_surgery.py`). The cache per token and
layer goes from 2 G d to kv_lora_rank + rope_heads d.
"""

from dataclasses import dataclass

import torch

from ..accounting import cache_bytes_per_token
from .upcycle import load_as_ours


@dataclass
class LayerReport:
    svd_relative_error: float  # ||A - A_r||_F / ||A||_F of the stacked [RoPE-less keys ; values]
    rope_dropped_energy: float  # share of the key weights' energy in virtual heads that lose RoPE


def gqa_to_mla(model_or_path, kv_lora_rank: int | None = None, rope_heads: int | None = None):
    """(an MLA copy of an attention model, report). `model_or_path`: ours, or a native Llama / Mistral
    / Qwen2 / Qwen3 (model or directory). Defaults: every group keeps RoPE and the full rank, an
    exact conversion."""
    model = load_as_ours(model_or_path)
    config = model.config
    groups, heads, dim = config.num_key_value_heads, config.num_attention_heads, config.head_dim
    rope_heads = groups if rope_heads is None else rope_heads
    full_rank = (groups - rope_heads) * dim + groups * dim
    kv_lora_rank = full_rank if kv_lora_rank is None else kv_lora_rank
    _check(config, rope_heads, kv_lora_rank, full_rank)
    new_config = _mla_config(config, rope_heads, kv_lora_rank)
    target = type(model)(new_config).to(model.dtype)
    state = {k: v for k, v in model.state_dict().items() if ".self_attn." not in k}
    reports = []
    for i, layer in enumerate(model.model.layers):
        weights, report = _convert_layer(layer.self_attn, groups, heads, dim, rope_heads, kv_lora_rank)
        state |= {f"model.layers.{i}.self_attn.{name}": w.to(model.dtype) for name, w in weights.items()}
        reports.append(report)
    target.load_state_dict(state, strict=True)
    return target.eval(), _summary(config, new_config, reports)


def _check(config, rope_heads: int, rank: int, full_rank: int):
    if set(config.mixer_types) != {"attn"}:
        raise ValueError(f"mixer_types={sorted(set(config.mixer_types))}: the surgery converts full-attention layers ('attn') only")
    for field, value in (("qk_norm", False), ("attention_bias", False), ("attention_out_bias", False)):
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} is not supported by the MLA surgery (needs {value!r})")
    if config.position_embedding_type != "rope":
        raise ValueError(f"position_embedding_type={config.position_embedding_type!r}: the surgery keeps RoPE, so it needs 'rope'")
    if not 1 <= rope_heads <= config.num_key_value_heads:
        raise ValueError(f"rope_heads={rope_heads} must lie in [1, num_key_value_heads={config.num_key_value_heads}]")
    if not 1 <= rank <= full_rank:
        raise ValueError(f"kv_lora_rank={rank} must lie in [1, {full_rank}] (the stacked RoPE-less keys and values)")


def _mla_config(config, rope_heads: int, rank: int):
    dim, groups = config.head_dim, config.num_key_value_heads
    fields = {k: v for k, v in config.to_dict().items() if k not in ("layer_types", "mixer_types", "ffn_types", "layer_pattern")}
    fields.update(
        layer_pattern=config.layer_pattern.replace("attn", "mla"), q_lora_rank=None, kv_lora_rank=rank,
        qk_nope_head_dim=(groups - rope_heads) * dim, qk_rope_head_dim=rope_heads * dim, v_head_dim=dim,
        mla_rope_groups=rope_heads, mla_latent_norm=False, rope_interleave=False, head_dim=dim,
        attention_multiplier=config.attention_multiplier or dim**-0.5, num_key_value_heads=config.num_attention_heads,
    )
    return type(config)(**fields)


@torch.no_grad()
def _convert_layer(attention, groups: int, heads: int, dim: int, rope_heads: int, rank: int):
    wq = attention.q_proj.weight.double().view(heads, dim, -1)  # [H, d, hidden]
    wk = attention.k_proj.weight.double().view(groups, dim, -1)  # [G, d, hidden]
    wv = attention.v_proj.weight.double().view(groups, dim, -1)
    mix = _rorope(wk, dim)  # [d/2, G, G], rows: virtual heads by energy
    k_virtual = _mix(mix, wk)  # [G, d, hidden]
    group_of = torch.arange(heads) // (heads // groups)
    q_virtual = _mix(mix[:, :, group_of], wq, per_head=True)  # [H, G, d, hidden]
    stacked = torch.cat([k_virtual[rope_heads:].flatten(0, 1), wv.flatten(0, 1)])  # [(G-m)d + Gd, hidden]
    u, s, vt = torch.linalg.svd(stacked, full_matrices=False)
    u_r, latent = u[:, :rank], s[:rank, None] * vt[:rank]  # [rows, r], [r, hidden]
    nope_rows = (groups - rope_heads) * dim
    w_uk = u_r[:nope_rows]  # [(G-m)d, r], shared by every head
    w_uv = u_r[nope_rows:].view(groups, dim, rank)[group_of]  # [H, d, r]
    q_nope, q_rope = q_virtual[:, rope_heads:].flatten(1, 2), q_virtual[:, :rope_heads].flatten(1, 2)
    weights = {
        "q_proj.weight": torch.cat([q_nope, q_rope], 1).flatten(0, 1),
        "kv_a_proj_with_mqa.weight": torch.cat([latent, k_virtual[:rope_heads].flatten(0, 1)]),
        "kv_b_proj.weight": torch.cat([w_uk.expand(heads, -1, -1), w_uv], 1).flatten(0, 1),
        "o_proj.weight": attention.o_proj.weight.double(),
    }
    energy = k_virtual.pow(2).sum(dim=(1, 2))  # [G]
    error = (stacked - u_r @ latent).norm() / stacked.norm()
    return weights, LayerReport(float(error), float(energy[rope_heads:].sum() / energy.sum()))


def _rorope(wk: torch.Tensor, dim: int) -> torch.Tensor:
    """[d/2, G, G] orthogonal mixes, per RoPE pair (i, i + d/2): eigenvectors of the groups' Gram
    matrix of those two rows, strongest first."""
    half = dim // 2
    pairs = torch.stack([wk[:, :half], wk[:, half:]], 2)  # [G, d/2, 2, hidden]
    gram = torch.einsum("gicx,ficx->igf", pairs, pairs)  # [d/2, G, G]
    _, vectors = torch.linalg.eigh(gram)  # ascending
    return vectors.flip(-1).transpose(1, 2)  # [d/2, G (virtual), G]


def _mix(mix: torch.Tensor, weights: torch.Tensor, per_head: bool = False) -> torch.Tensor:
    """Mix rows of `weights` pair by pair. Keys [G, d, hidden] -> virtual keys [G, d, hidden]; with
    per_head, queries [H, d, hidden] and the per-head columns mix[:, :, g(h)] [d/2, G, H] ->
    [H, G, d, hidden] (head h's query in every virtual head)."""
    both = torch.cat([mix, mix], 0)  # [d, G, *]: pair i rules dims i and i + d/2
    if per_head:
        return torch.einsum("cjh,hcx->hjcx", both, weights)
    return torch.einsum("cjg,gcx->jcx", both, weights)


def _summary(old, new, reports) -> dict:
    before = cache_bytes_per_token(old, 1)["bytes_per_token"]
    after = cache_bytes_per_token(new, 1)["bytes_per_token"]
    return {
        "kv_lora_rank": new.kv_lora_rank,
        "rope_heads": new.mla_rope_groups,
        "cache_bytes_per_token": {"before": before, "after": after, "reduction": 1 - after / before},
        "svd_relative_error": [r.svd_relative_error for r in reports],
        "rope_dropped_energy": [r.rope_dropped_energy for r in reports],
    }
