"""RWKV-4 (transformers `rwkv`) <-> llmarch_hybrid.

Each RwkvBlock is our layer `rwkv4/rwkv_cmix`: `ln1` -> time mix (`attention`, our `time_mix`) ->
`ln2` -> channel mix (`feed_forward`, our `mlp`), all LayerNorms; block 0's `pre_ln` on the
embeddings is our `embed_norm`, `ln_out` our final `norm`, `head` our `lm_head`. The modules'
own names and shapes are transformers' (time_decay, time_first, time_mix_*, key, value,
receptance, output). RWKV has no attention heads: the converted config says 1.

`rescale_every`: in eval mode transformers halves the residual stream every that many layers and
divides the branch outputs to match, to keep fp16 in range. Every branch reads the stream through a
LayerNorm, so this changes nothing but the LayerNorms' eps; ours keeps the stream unscaled.
"""

from transformers import RwkvConfig, RwkvForCausalLM

from ..models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from .checkpoint import refuse_unless_fixed, rename_key, shared_fields_from_hf, take_under_native_names

OURS = (LlmArchHybridConfig, LlmArchHybridForCausalLM)
FFN_KINDS = ("rwkv_cmix",)
NATIVE_CLASSES = {"rwkv": (RwkvConfig, RwkvForCausalLM)}
MIXER_KINDS = {"rwkv": ("rwkv4",)}
IGNORED_KEYS = ()
EMBED_KEY = "rwkv.embeddings.weight"
NATIVE_HEAD_KEY = "head.weight"
LN_OUT_EPS = 1e-5  # transformers builds ln_out with LayerNorm's default eps, whatever the config says

_RENAMES = (  # (ours, native)
    (r"model\.embed_tokens\.", "rwkv.embeddings."),
    (r"model\.embed_norm\.", "rwkv.blocks.0.pre_ln."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"rwkv.blocks.\1.ln1."),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.", r"rwkv.blocks.\1.ln2."),
    (r"model\.layers\.(\d+)\.time_mix\.", r"rwkv.blocks.\1.attention."),
    (r"model\.layers\.(\d+)\.mlp\.", r"rwkv.blocks.\1.feed_forward."),
    (r"model\.norm\.", "rwkv.ln_out."),
)
_FIXED = {
    "norm_type": "layernorm", "norm_eps": LN_OUT_EPS, "embedding_norm": True, "position_embedding_type": "none",
}


def native_key(ours: str) -> str:
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    if cfg.layer_norm_epsilon != LN_OUT_EPS:
        raise ValueError(
            f"rwkv layer_norm_epsilon={cfg.layer_norm_epsilon} is not supported: transformers' ln_out keeps eps "
            f"{LN_OUT_EPS} while the other norms take it, and ours use one eps for every norm"
        )
    n = cfg.num_hidden_layers
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=1, num_key_value_heads=1,
        intermediate_size=cfg.intermediate_size or 4 * cfg.hidden_size,
        rwkv4_attention_hidden_size=cfg.attention_hidden_size or cfg.hidden_size,
        mixer_types=["rwkv4"] * n, ffn_types=["rwkv_cmix"] * n, norm_type="layernorm", norm_eps=cfg.layer_norm_epsilon,
        embedding_norm=True, position_embedding_type="none", max_position_embeddings=cfg.context_length,
        **shared_fields_from_hf(cfg),
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    return {key: src.take(native_key(key), shape) for key, shape in expected.items()}


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    return take_under_native_names(src, expected, native_key)


def check_expressible(config, target: str):
    refuse_unless_fixed(config, target, _FIXED)


def config_to_hf(config, target: str):
    return RwkvConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        attention_hidden_size=config.rwkv4_attention_hidden_size, intermediate_size=config.intermediate_size,
        layer_norm_epsilon=config.norm_eps, context_length=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings, use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )
