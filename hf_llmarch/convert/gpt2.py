"""GPT-2 <-> llmarch_dense (learned positions, LayerNorm, plain MLP, biases everywhere).

GPT-2 stores its projections as `Conv1D`, whose weight is [in, out] (a Linear's transpose), and
fuses q, k, v into one `c_attn` whose output columns are [q | k | v].
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ..models.dense import LlmArchDenseConfig, LlmArchDenseForCausalLM
from .checkpoint import shared_fields_from_hf

# Our family these checkpoints convert to, and the FFN kinds its native layers express.
OURS = (LlmArchDenseConfig, LlmArchDenseForCausalLM)
FFN_KINDS = ("mlp",)
NATIVE_CLASSES = {"gpt2": (GPT2Config, GPT2LMHeadModel)}
MIXER_KINDS = {"gpt2": ("attn",)}
# Causal-mask buffers of older checkpoints; transformers 5 builds masks on the fly.
IGNORED_KEYS = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",)
EMBED_KEY = "transformer.wte.weight"

# Settings that change GPT-2's math in ways our attention cannot follow: field -> the value we need.
_REFUSED = {
    "scale_attn_weights": True,  # False drops the 1/sqrt(head_dim) scaling
    "scale_attn_by_inverse_layer_idx": False,  # True scales scores by 1/(layer_idx+1) per layer
    "add_cross_attention": False,  # extra cross-attention weights we have no place for
}
# Not refused: `reorder_and_upcast_attn` only reorders the scaling and computes scores in fp32
# on the eager path (sdpa ignores it); our eager path already takes the softmax in fp32, and in
# fp32 the product is the same. `summary_*` configure GPT2DoubleHeadsModel, not the LM.
_NEEDS = {
    "norm_type": "layernorm",
    "position_embedding_type": "learned",
    "mlp_gated": False,
    "qk_norm": False,
    "attention_bias": True,  # Conv1D always carries a bias
    "attention_out_bias": True,
    "mlp_bias": True,
}


def config_from_hf(cfg) -> dict:
    for field, value in _REFUSED.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"gpt2 {field}={getattr(cfg, field)!r} cannot be converted: llmarch_dense needs {value!r}")
    n, hidden = cfg.n_layer, cfg.n_embd
    return dict(
        **shared_fields_from_hf(cfg),
        vocab_size=cfg.vocab_size,
        hidden_size=hidden,
        intermediate_size=cfg.n_inner if cfg.n_inner is not None else 4 * hidden,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=hidden // cfg.n_head,
        mixer_types=["attn"] * n,
        ffn_types=["mlp"] * n,
        hidden_act=cfg.activation_function,
        mlp_gated=False,
        mlp_bias=True,
        norm_type="layernorm",
        norm_eps=cfg.layer_norm_epsilon,
        position_embedding_type="learned",
        max_position_embeddings=cfg.n_positions,
        attention_bias=True,
        attention_out_bias=True,
        # Dropout only acts in training; we have one rate for embeddings and residuals.
        attention_dropout=float(cfg.attn_pdrop),
        hidden_dropout=float(cfg.resid_pdrop),
    )


def check_expressible(config, target: str):
    for field, value in _NEEDS.items():
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in gpt2 (which needs {value!r})")
    if "swa" in config.mixer_types:
        raise ValueError(f"mixer_types={config.mixer_types}: gpt2 has no sliding-window attention")
    if config.num_key_value_heads != config.num_attention_heads:
        raise ValueError(
            f"num_key_value_heads={config.num_key_value_heads} != num_attention_heads={config.num_attention_heads}: "
            "gpt2 has no grouped-query attention"
        )
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(f"head_dim={config.head_dim} * num_attention_heads must equal hidden_size={config.hidden_size} in gpt2")


def config_to_hf(config, target: str = "gpt2") -> GPT2Config:
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        activation_function=config.hidden_act,
        resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.norm_eps,
        initializer_range=config.initializer_range,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


# (gpt2 name, our name) within layer i: renamed as they are, and Conv1D weights that get transposed.
_LAYER_RENAMES = (
    ("ln_1.weight", "input_layernorm.weight"),
    ("ln_1.bias", "input_layernorm.bias"),
    ("ln_2.weight", "post_attention_layernorm.weight"),
    ("ln_2.bias", "post_attention_layernorm.bias"),
    ("attn.c_proj.bias", "self_attn.o_proj.bias"),
    ("mlp.c_fc.bias", "mlp.up_proj.bias"),
    ("mlp.c_proj.bias", "mlp.down_proj.bias"),
)
_LAYER_TRANSPOSES = (
    ("attn.c_proj.weight", "self_attn.o_proj.weight"),
    ("mlp.c_fc.weight", "mlp.up_proj.weight"),
    ("mlp.c_proj.weight", "mlp.down_proj.weight"),
)
_TOP_RENAMES = (
    ("wte.weight", "model.embed_tokens.weight"),
    ("wpe.weight", "model.embed_positions.weight"),
    ("ln_f.weight", "model.norm.weight"),
    ("ln_f.bias", "model.norm.bias"),
)


def _pairs(config, p: str, table) -> list[tuple[str, str]]:
    """(gpt2 key with prefix p, our key) for every layer."""
    n = config.num_hidden_layers
    return [(f"{p}h.{i}.{theirs}", f"model.layers.{i}.{ours}") for i in range(n) for theirs, ours in table]


def _renames(config, p: str) -> list[tuple[str, str]]:
    return [(p + theirs, ours) for theirs, ours in _TOP_RENAMES] + _pairs(config, p, _LAYER_RENAMES)


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    # A saved bare GPT2Model has no `transformer.` prefix (the original openai-community/gpt2 files).
    p = "transformer." if any(k.startswith("transformer.") for k in src.keys()) else ""
    out = {ours: src.take(theirs, expected[ours]) for theirs, ours in _renames(config, p)}
    for theirs, ours in _pairs(config, p, _LAYER_TRANSPOSES):
        out[ours] = src.take(theirs, expected[ours][::-1]).t().contiguous()  # [in, out] -> [out, in]
    for i in range(config.num_hidden_layers):
        attn = f"model.layers.{i}.self_attn."
        hidden = config.hidden_size
        qkv_w = src.take(f"{p}h.{i}.attn.c_attn.weight", (hidden, 3 * hidden)).t()  # [3H, H], rows q|k|v
        qkv_b = src.take(f"{p}h.{i}.attn.c_attn.bias", (3 * hidden,))
        for name, w, b in zip("qkv", qkv_w.chunk(3, dim=0), qkv_b.chunk(3, dim=0)):
            out[f"{attn}{name}_proj.weight"], out[f"{attn}{name}_proj.bias"] = w.contiguous(), b.contiguous()
    return out


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    out = {theirs: src.take(ours, expected[theirs]) for theirs, ours in _renames(config, "transformer.")}
    for theirs, ours in _pairs(config, "transformer.", _LAYER_TRANSPOSES):
        out[theirs] = src.take(ours, expected[theirs][::-1]).t().contiguous()  # [out, in] -> [in, out]
    for i in range(config.num_hidden_layers):
        attn = f"model.layers.{i}.self_attn."
        shape = (config.hidden_size, config.hidden_size)
        weights = [src.take(f"{attn}{n}_proj.weight", shape) for n in "qkv"]
        biases = [src.take(f"{attn}{n}_proj.bias", shape[:1]) for n in "qkv"]
        out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(weights, dim=0).t().contiguous()  # [H, 3H]
        out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(biases, dim=0)
    return out
