"""Parameter counts by component (matmul weights apart from the rest), from a config alone."""

import copy

import torch

from ..models.encoder import LlmArchEncoderConfig
from ..models.seq2seq import LlmArchSeq2SeqConfig
from ..pattern import parallel_parts
from ..topology import shared_block_of_layer

from .basics import Params, add, linear
from .recurrent import FIRST_LAYER_WITHOUT, HISTORY_ELEMENTS_PER_TOKEN, RECURRENT_MIXER_PARAMS


def is_encoder(config) -> bool:
    """An encoder-family config: its heads are the pre-training model's, not a causal LM head."""
    return config.model_type == LlmArchEncoderConfig.model_type


def is_seq2seq(config) -> bool:
    """An encoder-decoder config (llmarch_seq2seq): its fields describe the decoder stack, and
    `stack_config(encoder=True)` the encoder's."""
    return config.model_type == LlmArchSeq2SeqConfig.model_type


def stacks(config) -> dict:
    """The stacks the counted model holds, by name: an encoder-decoder's two views, else the one stack."""
    if is_seq2seq(config):
        return {"encoder": config.stack_config(encoder=True), "decoder": config}
    return {"stack": config}


def embedding_width(config) -> int:
    """E: the width tokens embed in (ALBERT/ELECTRA's factorised embeddings), else hidden_size."""
    return config.embedding_size or config.hidden_size


def _norm_params(config, dim: int | None = None) -> int:
    dim = dim or config.hidden_size
    return 2 * dim if config.norm_type == "layernorm" else dim


def _attention_params(config, gated: bool = False) -> Params:
    """Softmax attention; `gated` (gated_attn): q_proj also projects the per-channel output gate."""
    h, hd = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * hd, config.num_key_value_heads * hd
    qk_norm = (0, 2 * hd) if config.qk_norm else (0, 0)  # always RMSNorm, whatever norm_type
    return add(
        linear(h, q_out * (2 if gated else 1), config.attention_bias),
        linear(h, kv_out, config.attention_bias),
        linear(h, kv_out, config.attention_bias),
        linear(q_out, h, config.attention_out_bias),
        qk_norm,
    )


def _mla_params(config) -> Params:
    """Low-rank (q_a, norm, q_b) or full query, the shared kv_a down-projection and its norm, the
    per-head kv_b up-projection and o_proj."""
    h, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
    qk = config.qk_nope_head_dim + config.qk_rope_head_dim
    if config.q_lora_rank is None:
        query = linear(h, heads * qk)
    else:
        query = add(linear(h, config.q_lora_rank, bias), (0, config.q_lora_rank), linear(config.q_lora_rank, heads * qk))
    return add(
        query,
        linear(h, config.kv_lora_rank + config.qk_rope_head_dim, bias),  # kv_a_proj_with_mqa
        (0, config.kv_lora_rank if config.mla_latent_norm else 0),  # kv_a_layernorm
        linear(config.kv_lora_rank, heads * (config.qk_nope_head_dim + config.v_head_dim)),  # kv_b_proj
        linear(heads * config.v_head_dim, h, bias),  # o_proj
    )


def _dsa_params(config) -> Params:
    """MLA and the lightning indexer: wq_b from the query latent, wk, its LayerNorm and the head weights."""
    heads, dim = config.index_n_heads, config.index_head_dim
    indexer = add(linear(config.q_lora_rank, heads * dim), linear(config.hidden_size, dim), (0, 2 * dim))
    return add(_mla_params(config), indexer, linear(config.hidden_size, heads))


_MIXER_PARAMS = {
    "attn": _attention_params,
    "swa": _attention_params,
    "gated_attn": lambda c: _attention_params(c, gated=True),
    **RECURRENT_MIXER_PARAMS,
    "mla": _mla_params,
    "dsa": _dsa_params,
}
# Mixers with a per-token cache: the values each holds per token per layer. MLA caches its latent and
# the shared RoPE key only (layers.md §2a).
KV_ELEMENTS_PER_TOKEN = {
    "attn": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "swa": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "gated_attn": lambda c: 2 * c.num_key_value_heads * c.head_dim,
    "mla": lambda c: c.kv_lora_rank + c.qk_rope_head_dim,
    "dsa": lambda c: c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim,  # and the indexer's key
    **HISTORY_ELEMENTS_PER_TOKEN,
}
# Attention FLOPs per attended key per query: 2 per q.k multiply-add and 2 per weights.v one, per head.
# MLA counts its per-head (expanded) form, the one training runs.
ATTENTION_FLOPS_PER_KEY = {
    "attn": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "swa": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "gated_attn": lambda c: 4 * c.num_attention_heads * c.head_dim,
    "mla": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
    "dsa": lambda c: 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim),
    "hyena": lambda c: 2 * (c.hyena_order - 1) * c.hidden_size,  # a multiply-add per past input per channel
}
# Per key of the whole context, on top of the attended ones: DSA's indexer scores every cached key.
INDEXER_FLOPS_PER_KEY = {"dsa": lambda c: 2 * c.index_n_heads * c.index_head_dim}
STATE_DTYPE = torch.float32  # recurrent states are kept in fp32 whatever the model dtype (conv histories: the model's)


def layer_parts(mixer: str) -> list[str]:
    """The mixers a layer runs: a par() layer's parts, or the one mixer."""
    return parallel_parts(mixer) or [mixer]


def _mixer_params(config, mixer: str) -> Params:
    if parallel_parts(mixer):
        return add(*(_mixer_params(config, part) for part in parallel_parts(mixer)))
    if mixer not in _MIXER_PARAMS:
        raise NotImplementedError(f"accounting does not know mixer {mixer!r} yet; known: {sorted(_MIXER_PARAMS)}")
    return _MIXER_PARAMS[mixer](config)


def _dense_ffn_params(config, inner: int | None = None) -> Params:
    """A dense MLP `inner` wide (default config.intermediate_size)."""
    h, inner, bias = config.hidden_size, inner or config.intermediate_size, config.mlp_bias
    up = [linear(h, inner, bias)] * (2 if config.mlp_gated else 1)  # gate_proj + up_proj, or up_proj
    return add(*up, linear(inner, h, bias))


def _router_params(config) -> Params:
    """The gate [E, H], plus the noise gate [E, H] of noisy top-k or the group gate [G, H] of the
    hierarchical router (DeepSeek's selection bias is a buffer, not a parameter)."""
    h, e = config.hidden_size, config.num_experts
    router_type = getattr(config, "router_type", None) or "softmax_topk"
    extra = {"noisy_topk": linear(h, e), "hierarchical": linear(h, config.n_group or 1)}.get(router_type, (0, 0))
    return add(linear(h, e), extra)


def _shared_expert_params(config) -> Params:
    """The shared expert MLP and its [1, H] gate; every token uses them, so they count as active."""
    if not config.shared_expert_intermediate_size:
        return (0, 0)
    gate = linear(config.hidden_size, 1) if config.shared_expert_gate else (0, 0)
    return add(_dense_ffn_params(config, config.shared_expert_intermediate_size), gate)


def _channel_mix_params(config, mixer: str) -> Params:
    """RWKV's channel mix: key and value (and RWKV-4's receptance), and its token-shift mixes."""
    h, inner = config.hidden_size, config.intermediate_size
    if mixer == "rwkv7":
        return add(linear(h, inner), linear(inner, h), (0, h))
    return add(linear(h, inner), linear(h, h), linear(inner, h), (0, 2 * h))


def _stored_layers(config) -> list[int]:
    """The first layer of each distinct block: ALBERT's shared layers store num_layer_groups blocks."""
    return sorted({block: i for i, block in reversed(list(enumerate(shared_block_of_layer(config))))}.values())


def layer_counts(config, stored: bool = False) -> dict:
    """Parameter counts of the stack, split by component, with matmul/other kept apart.

    By default every layer that runs counts (FLOPs); `stored` counts each shared block once
    (parameters). `norms` are the layers' own norms, not the final or embedding norm.
    `cross_attention`: a decoder stack's cross-attention (plain attention of the config's heads, in
    every layer whatever its mixer); its norms are among `norms`."""
    h, e, k = config.hidden_size, config.num_experts, config.num_experts_per_tok
    # gate_up [2I, H] (or a plain expert's up [I, H]) + down [H, I]
    per_expert = (3 if config.mlp_gated else 2) * h * config.moe_intermediate_size
    mixers: dict[str, Params] = {}
    dense = experts = experts_active = router = shared_experts = cross = (0, 0)
    norms = 0
    for i in _stored_layers(config) if stored else range(len(config.mixer_types)):
        mixer, ffn = config.mixer_types[i], config.ffn_types[i]
        mixers[mixer] = add(mixers.get(mixer, (0, 0)), _mixer_params(config, mixer))
        norms += _norm_params(config)  # input_layernorm
        if config.cross_attention:  # an encoder-decoder's decoder block: cross_attn and cross_attn_layernorm
            cross = add(cross, _attention_params(config))
            norms += _norm_params(config)
        if ffn == "none":
            continue
        norms += _norm_params(config)  # post_attention_layernorm
        if ffn == "moe":
            router = add(router, _router_params(config))
            shared_experts = add(shared_experts, _shared_expert_params(config))
            experts = add(experts, (e * per_expert, 0))
            experts_active = add(experts_active, (k * per_expert, 0))
        elif ffn == "rwkv_cmix":
            dense = add(dense, _channel_mix_params(config, mixer))
        else:
            dense = add(dense, _dense_ffn_params(config))
    for mixer, missing in FIRST_LAYER_WITHOUT.items():
        if mixer in mixers:
            mixers[mixer] = tuple(total - part for total, part in zip(mixers[mixer], missing(config)))
    return {
        "mixers": mixers,
        "dense_ffn": dense,
        "moe_experts": experts,
        "moe_experts_active": experts_active,
        "moe_shared": shared_experts,
        "router": router,
        "cross_attention": cross,
        "norms": norms,
    }


def _token_table_params(config) -> int:
    return config.vocab_size * embedding_width(config)


def _embedding_params(config) -> int:
    """Token, learned-position and token-type tables, E wide, embed_proj lifting E to hidden_size,
    and T5's relative-position bias table (num_buckets x heads, one per stack). Sinusoidal positions
    and RoPE hold no parameters."""
    width, rows = embedding_width(config), config.vocab_size + config.type_vocab_size
    if config.position_embedding_type == "learned":
        rows += config.max_position_embeddings  # position_offset indexes into this table, it adds no rows
    lift = sum(linear(width, config.hidden_size, True)) if width != config.hidden_size else 0
    relative = 0
    if config.position_embedding_type == "relative_buckets":
        relative = config.relative_attention_num_buckets * config.num_attention_heads
    return rows * width + lift + relative


def _outer_norm_params(config) -> int:
    """The embedding norm (E wide) and the final norm, which post-norm stacks lack (their blocks end normed)."""
    embed = _norm_params(config, embedding_width(config)) if config.embedding_norm else 0
    return embed + (_norm_params(config) if config.norm_placement == "pre" else 0)


def _lm_head_params(config) -> int:
    """The vocabulary projection's own parameters: its weight when untied, and an encoder's bias
    (an encoder-decoder's with `lm_head_bias`: BART's final_logits_bias, a parameter here)."""
    if is_seq2seq(config):
        weight = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
        return weight + (config.vocab_size if config.lm_head_bias else 0)
    if is_encoder(config):
        return config.vocab_size * (1 + (0 if config.tie_word_embeddings else embedding_width(config)))
    return 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size


def _encoder_head_params(config) -> dict[str, int]:
    """What AutoModelForPreTraining adds to an encoder: the MLM transform (dense H -> E and an
    nn.LayerNorm E, whatever norm_type) and, with a pair_task (NSP/SOP), the pooler it reads and the
    2-way pair classifier. Without a pair_task (RoBERTa) the encoder is built without its pooler."""
    if not is_encoder(config):
        return {}
    h, width, pair = config.hidden_size, embedding_width(config), config.pair_task is not None
    return {
        "pooler": sum(linear(h, h, True)) if pair else 0,
        "mlm_head": sum(linear(h, width, True)) + 2 * width,
        "pair_classifier": sum(linear(h, 2, True)) if pair else 0,
    }


def counted_model(config) -> str:
    """The model whose parameters `count_parameters` counts."""
    if is_seq2seq(config):
        return "AutoModelForSeq2SeqLM (encoder + decoder)"
    if not is_encoder(config):
        return "AutoModelForCausalLM"
    pair = f" + pooler + {config.pair_task.upper()} head" if config.pair_task else ""
    return f"AutoModelForPreTraining (encoder + MLM head{pair})"


def io_matmul_params(config, encoder: bool = False) -> int:
    """Matmul weights per token outside the stack: embed_proj, and the vocabulary projection (a
    matmul even when tied) behind an encoder's MLM transform. The pooler and pair classifier run
    once per sequence, not per token, and are left out. For an encoder-decoder pass the stack:
    the decoder's has the vocabulary projection, the encoder's (`encoder=True`) its embed_proj only."""
    width = embedding_width(config)
    lift = width * config.hidden_size if width != config.hidden_size else 0
    if encoder:
        return lift
    if is_encoder(config):
        return lift + config.hidden_size * width + config.vocab_size * width
    return lift + config.vocab_size * config.hidden_size


def count_parameters(config) -> dict:
    """Total and active parameters of the model `counted_model(config)` names, and where they sit.

    For decoders that is the causal LM; for encoders the pre-training model AutoModelForPreTraining
    builds (MLM head, plus pooler and NSP/SOP classifier with a pair_task; ELECTRA-shaped configs
    included: the discriminator's replaced-token head is not an Auto class). `heads` lists those.
    For encoder-decoders (llmarch_seq2seq) it is AutoModelForSeq2SeqLM: both stacks (each with its
    own position table or relative-bias table, embedding norm, embed_proj and final norm), the
    decoder's cross-attention (`mixers['cross_attn']`, its norms among `norms`), the token table
    once (both stacks read it), the output layer when untied and its bias with `lm_head_bias`;
    `stacks` then gives each stack's own parameters (everything but the token table and lm_head).
    `total` equals `sum(p.numel() for p in model.parameters())` (tied weights once; ALBERT's shared
    blocks once: num_layer_groups of them, not num_hidden_layers).
    `active` is what one token touches: every parameter except the routed experts it is not sent
    to (num_experts_per_tok of num_experts count per MoE layer; the router and shared experts count fully). As is
    customary, the whole embedding table counts as active. Multi-token-prediction modules (`mtp`) count in
    `total` but not in `active`: decoding runs without them.
    """
    per_stack = {name: _stack_params(view) for name, view in stacks(config).items()}
    token_table = _token_table_params(config)
    lm_head, heads = _lm_head_params(config), _encoder_head_params(config)

    def summed(key):
        return sum(counts[key] for counts in per_stack.values())

    mixers: dict[str, int] = {}
    for counts in per_stack.values():
        for name, n in counts["mixers"].items():
            mixers[name] = mixers.get(name, 0) + n
    embeddings = token_table + summed("embeddings")
    shared = embeddings + lm_head + sum(mixers.values()) + summed("dense_ffn") + summed("router")
    shared += summed("moe_shared") + summed("norms") + sum(heads.values())
    mtp = 0 if is_seq2seq(config) else _mtp_params(config)  # the seq2seq model builds no MTP modules
    result = {
        "counted_model": counted_model(config),
        "total": shared + summed("moe_experts") + mtp,
        "active": shared + summed("moe_experts_active"),
        "embeddings": embeddings,
        "lm_head": lm_head,
        "mixers": mixers,
        "dense_ffn": summed("dense_ffn"),
        "moe_experts": summed("moe_experts"),
        "moe_experts_active": summed("moe_experts_active"),
        "moe_shared": summed("moe_shared"),
        "router": summed("router"),
        "norms": summed("norms"),
        "heads": heads,
        "mtp": mtp,
    }
    if is_seq2seq(config):
        result["stacks"] = {name: counts["total"] for name, counts in per_stack.items()}
    return result


def _stack_params(config) -> dict[str, int]:
    """One stack's parameters by component, less the token table (which encoder-decoder stacks share):
    its stored layers, position / token-type / relative-bias tables, embed_proj, and outer norms."""
    layers = layer_counts(config, stored=True)
    mixers = {name: sum(p) for name, p in layers["mixers"].items()}
    if any(layers["cross_attention"]):
        mixers["cross_attn"] = sum(layers["cross_attention"])
    counts = {
        "mixers": mixers,
        "embeddings": _embedding_params(config) - _token_table_params(config),
        "norms": layers["norms"] + _outer_norm_params(config),
        **{key: sum(layers[key]) for key in ("dense_ffn", "moe_experts", "moe_experts_active", "moe_shared", "router")},
    }
    stored = ("embeddings", "norms", "dense_ffn", "moe_experts", "moe_shared", "router")
    counts["total"] = sum(mixers.values()) + sum(counts[key] for key in stored)
    return counts


def _mtp_params(config) -> int:
    """The num_nextn_predict_layers MTP modules: each a layer of the stack's last kinds (all its experts),
    its enorm, hnorm and head norm, and eh_proj [H, 2H]. Not `active`: the main model decodes without them."""
    if not config.num_nextn_predict_layers:
        return 0
    last = copy.copy(config)
    last.mixer_types, last.ffn_types = config.mixer_types[-1:], config.ffn_types[-1:]
    module = layer_counts(last)
    per_module = sum(sum(part) for part in module["mixers"].values()) + module["norms"]
    per_module += sum(sum(module[key]) for key in ("dense_ffn", "moe_experts", "moe_shared", "router"))
    per_module += 3 * _norm_params(config) + 2 * config.hidden_size * config.hidden_size
    return config.num_nextn_predict_layers * per_module
