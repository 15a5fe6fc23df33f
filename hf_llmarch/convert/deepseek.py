"""DeepSeek-V2 / V3 / V3.2 (transformers `deepseek_v2`, `deepseek_v3`, `deepseek_v32`) <-> llmarch_deepseek.

Every layer is MLA (`mla`, parameter names transformers' own); the first `first_k_dense_replace`
layers have a dense MLP, the rest DeepSeekMoE with the `n_shared_experts` shared experts as one MLP
of width n * moe_intermediate_size. The routers:
- V3: our `deepseek` router (sigmoid scores, selection bias, group-limited top-k by the top-2 sum,
  `routed_scaling_factor`);
- V2: our `softmax_topk` (never renormalised: transformers' V2 ignores `norm_topk_prob`), with
  `topk_method="group_limited_greedy"` as n_group > 1 (groups ranked by their best expert), times
  `routed_scaling_factor`.
V2 rotates its RoPE pairs in the interleaved layout, which is our `rope_interleave=True`. V3.2 is V3
with DeepSeek Sparse Attention in every layer (our `dsa`: MLA plus the lightning indexer, whose
weights keep their names under `self_attn.indexer`), and its dense / MoE layers listed by
`mlp_layer_types`.

Names: transformers' `mlp.gate.e_score_correction_bias` is our router's buffer
`mlp.router.e_score_correction_bias`, `mlp.shared_experts` our `mlp.shared_expert`. On disk (the
Hub's checkpoints) each expert is separate, `mlp.experts.E.{gate,up,down}_proj`; reading fuses them.
DeepSeek-V3's multi-token-prediction modules are layers `num_hidden_layers + k` of the checkpoint
(`model.layers.61` for V3) with `num_nextn_predict_layers` in its config.json: they become our
`mtp.layers.k` (`shared_head.norm` is our `shared_head_norm`; the checkpoint's copies of the
embedding and the head, `embed_tokens` and `shared_head.head`, must equal the main ones). transformers'
DeepseekV3ForCausalLM has no MTP module: `save_to_hf` (`llmarch export`) writes ours back into the
checkpoint under those names, and `to_hf`, which returns a model instance, refuses a model with one.
"""

import logging
import re

import torch
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    DeepseekV32Config,
    DeepseekV32ForCausalLM,
)

from ..models.deepseek import LlmArchDeepseekConfig, LlmArchDeepseekForCausalLM
from .checkpoint import refuse_unless_fixed, rename_key, shared_fields_from_hf, take_under_native_names
from .moe import fused_experts

logger = logging.getLogger(__name__)

OURS = (LlmArchDeepseekConfig, LlmArchDeepseekForCausalLM)
FFN_KINDS = ("mlp", "moe")
NATIVE_CLASSES = {
    "deepseek_v2": (DeepseekV2Config, DeepseekV2ForCausalLM),
    "deepseek_v3": (DeepseekV3Config, DeepseekV3ForCausalLM),
    "deepseek_v32": (DeepseekV32Config, DeepseekV32ForCausalLM),
}
MIXER_KINDS = {"deepseek_v2": ("mla",), "deepseek_v3": ("mla",), "deepseek_v32": ("dsa",)}
ROUTER_TYPES = {"deepseek_v2": "softmax_topk", "deepseek_v3": "deepseek", "deepseek_v32": "deepseek"}
IGNORED_KEYS = ()
EMBED_KEY = "model.embed_tokens.weight"
PER_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")

_RENAMES = (  # (ours, native); MTP modules are first moved to their layer number (`_mtp_native_key`)
    (r"(model\.layers\.\d+)\.shared_head_norm\.", r"\1.shared_head.norm."),
    (r"(model\.layers\.\d+\.mlp)\.router\.", r"\1.gate."),
    (r"(model\.layers\.\d+\.mlp)\.shared_expert\.", r"\1.shared_experts."),
)
_FIXED = {
    "norm_type": "rmsnorm", "mlp_gated": True, "mlp_bias": False, "qk_norm": False, "position_embedding_type": "rope",
    "shared_expert_gate": False,
}


def native_key(ours: str, num_layers: int = 0) -> str:
    """The checkpoint's name of our key; `mtp.layers.k.` is the checkpoint's layer num_layers + k."""
    mtp = re.match(r"mtp\.layers\.(\d+)\.", ours)
    if mtp:
        ours = f"model.layers.{num_layers + int(mtp.group(1))}." + ours[mtp.end() :]
    return rename_key(ours, _RENAMES)


def config_from_hf(cfg) -> dict:
    shared = cfg.n_shared_experts * cfg.moe_intermediate_size if cfg.n_shared_experts else None
    mixers, ffns = _stack(cfg)
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        mixer_types=mixers, ffn_types=ffns,
        hidden_act=cfg.hidden_act, norm_type="rmsnorm", norm_eps=cfg.rms_norm_eps, position_embedding_type="rope",
        rope_parameters=dict(cfg.rope_parameters), max_position_embeddings=cfg.max_position_embeddings,
        attention_bias=cfg.attention_bias, attention_dropout=float(cfg.attention_dropout or 0.0),
        q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, head_dim=cfg.qk_rope_head_dim,
        num_experts=cfg.n_routed_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.moe_intermediate_size, routed_scaling_factor=cfg.routed_scaling_factor,
        shared_expert_intermediate_size=shared, shared_expert_gate=False, router_z_loss_coef=0.0,
        num_nextn_predict_layers=getattr(cfg, "num_nextn_predict_layers", 0) or 0,
        **(_v2_fields(cfg) if cfg.model_type == "deepseek_v2" else _v3_fields(cfg)),
        **shared_fields_from_hf(cfg),
    )


def _stack(cfg) -> tuple[list[str], list[str]]:
    """(mixer_types, ffn_types): V3.2's sparse attention and `mlp_layer_types`; V2/V3's MLA with
    first_k_dense_replace dense layers first."""
    n = cfg.num_hidden_layers
    if cfg.model_type == "deepseek_v32":
        return ["dsa"] * n, ["moe" if kind == "sparse" else "mlp" for kind in cfg.mlp_layer_types]
    dense = min(cfg.first_k_dense_replace, n)
    return ["mla"] * n, ["mlp"] * dense + ["moe"] * (n - dense)


def _v3_fields(cfg) -> dict:
    fields = dict(router_type="deepseek", norm_topk_prob=cfg.norm_topk_prob, n_group=cfg.n_group, topk_group=cfg.topk_group)
    if cfg.model_type == "deepseek_v32":  # always interleaved RoPE pairs in the attention
        return fields | dict(
            rope_interleave=True, index_n_heads=cfg.index_n_heads, index_head_dim=cfg.index_head_dim,
            index_topk=cfg.index_topk,
        )
    return fields | dict(rope_interleave=cfg.rope_interleave)


def _v2_fields(cfg) -> dict:
    if cfg.topk_method not in ("greedy", "group_limited_greedy"):
        raise ValueError(f"deepseek_v2 topk_method={cfg.topk_method!r} is not supported; known: greedy, group_limited_greedy")
    rotary_dim = getattr(cfg, "head_dim", None) or cfg.qk_rope_head_dim
    if rotary_dim != cfg.qk_rope_head_dim:
        raise ValueError(f"deepseek_v2 head_dim={rotary_dim} (its rotary width) must equal qk_rope_head_dim={cfg.qk_rope_head_dim}")
    grouped = cfg.topk_method == "group_limited_greedy"
    return dict(
        rope_interleave=True, router_type="softmax_topk", norm_topk_prob=False,
        n_group=cfg.n_group if grouped else 1, topk_group=cfg.topk_group if grouped else 1,
    )


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    """Ours from native, in memory (fused experts) or on disk (one tensor per expert)."""
    _check_mtp_layers(src, config)
    if not config.shared_expert_intermediate_size:
        _take_empty_shared_experts(src)
    state_dict = {}
    for key, shape in expected.items():
        native = native_key(key, config.num_hidden_layers)
        if native in src or ".mlp.experts." not in key:
            state_dict[key] = src.take(native, shape)
        else:
            experts, fused = native.rsplit(".", 1)  # model.layers.N.mlp.experts, gate_up_proj | down_proj
            state_dict[key] = fused_experts(src, experts, PER_EXPERT_NAMES, fused, shape)
    _take_mtp_copies(src, config)
    return state_dict


def fields_for_checkpoint(fields: dict, src) -> dict:
    """The MTP depth the tensors support. transformers' DeepseekV3Config says num_nextn_predict_layers=1
    but its model never stores the module: with no MTP layer at all the main model converts alone.
    Some MTP layers but fewer than the depth is an error naming the first missing one."""
    n, depth = len(fields["mixer_types"]), fields["num_nextn_predict_layers"]
    stored = [k for k in range(depth) if any(key.startswith(f"model.layers.{n + k}.") for key in src.keys())]
    if not stored:
        if depth:
            logger.info("num_nextn_predict_layers=%d but the checkpoint holds no MTP layer: converting the main model", depth)
        return fields | {"num_nextn_predict_layers": 0}
    missing = next((k for k in range(depth) if k not in stored), None)
    if missing is not None:
        raise ValueError(
            f"num_nextn_predict_layers={depth} but the checkpoint holds no model.layers.{n + missing}.* (MTP module "
            f"{missing}): set num_nextn_predict_layers to the MTP layers it stores"
        )
    return fields


def _check_mtp_layers(src, config):
    """Layers num_hidden_layers .. + depth - 1 are the MTP modules; one past them is an error."""
    n, depth = config.num_hidden_layers, config.num_nextn_predict_layers
    beyond = f"model.layers.{n + depth}."
    if any(key.startswith(beyond) for key in src.keys()):
        raise ValueError(
            f"the checkpoint holds {beyond}* but its config says num_nextn_predict_layers={depth} after "
            f"num_hidden_layers={n}: set num_nextn_predict_layers to the number of MTP layers it stores"
        )


def _take_mtp_copies(src, config):
    """DeepSeek stores each MTP module's shared embedding and head again; they must be the main ones."""
    for k in range(config.num_nextn_predict_layers):
        layer = f"model.layers.{config.num_hidden_layers + k}."
        head = "lm_head.weight" if "lm_head.weight" in src else EMBED_KEY  # a tied head is the embedding
        for copy_key, main_key in ((f"{layer}embed_tokens.weight", EMBED_KEY), (f"{layer}shared_head.head.weight", head)):
            if copy_key not in src:
                continue
            tensor = src.take(copy_key, tuple(src.shapes[copy_key]))
            if not torch.equal(tensor, src.take(main_key, tuple(src.shapes[main_key]))):
                raise ValueError(f"{copy_key} differs from {main_key}: DeepSeek's MTP modules share the main embedding and head")


def _take_empty_shared_experts(src):
    """With n_shared_experts=0 transformers still builds the shared MLP, 0 wide: those tensors hold nothing."""
    for key in [k for k in src.keys() if ".mlp.shared_experts." in k]:
        shape = tuple(src.shapes[key])
        if 0 not in shape:
            raise ValueError(f"{key} has shape {shape} although n_shared_experts=0")
        src.take(key, shape)


def state_dict_to_hf(src, expected: dict[str, tuple], config) -> dict:
    """By name; without a shared expert transformers' model still wants its 0-wide shared MLP."""
    empty = {k: torch.empty(shape) for k, shape in expected.items() if ".mlp.shared_experts." in k and 0 in shape}
    rest = {k: shape for k, shape in expected.items() if k not in empty}
    return empty | take_under_native_names(src, rest, lambda key: native_key(key, config.num_hidden_layers))


def extra_tensors_to_hf(src, config) -> dict:
    """Our MTP modules under DeepSeek's checkpoint names (layer num_hidden_layers + k), each with the
    copies of the embedding and the head DeepSeek stores beside it; transformers' class holds none."""
    extra, n = {}, config.num_hidden_layers
    for key in [k for k in src.keys() if k.startswith("mtp.layers.")]:
        extra[native_key(key, n)] = src.take(key, tuple(src.shapes[key]))
    head = "lm_head.weight" if "lm_head.weight" in src else EMBED_KEY
    for k in range(config.num_nextn_predict_layers):
        extra[f"model.layers.{n + k}.embed_tokens.weight"] = src.take(EMBED_KEY, tuple(src.shapes[EMBED_KEY])).clone()
        extra[f"model.layers.{n + k}.shared_head.head.weight"] = src.take(head, tuple(src.shapes[head])).clone()
    return extra


def check_expressible(config, target: str):
    fixed = _FIXED | {"router_type": ROUTER_TYPES[target]}
    if target == "deepseek_v2":  # interleaved RoPE pairs, weights never renormalised
        fixed |= {"rope_interleave": True, "norm_topk_prob": False}
    if target == "deepseek_v32":
        fixed |= {"rope_interleave": True}
    refuse_unless_fixed(config, target, fixed)
    kinds = config.ffn_types
    dense = kinds.count("mlp")
    if target != "deepseek_v32" and kinds != ["mlp"] * dense + ["moe"] * (len(kinds) - dense):
        raise ValueError(f"ffn_types={kinds}: {target} has its dense layers first (first_k_dense_replace), then MoE")
    shared = config.shared_expert_intermediate_size or 0
    if shared % config.moe_intermediate_size:
        raise ValueError(
            f"shared_expert_intermediate_size={shared} must be a multiple of moe_intermediate_size="
            f"{config.moe_intermediate_size} in {target} (n_shared_experts experts of that width)"
        )


def config_to_hf(config, target: str):
    fields = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        moe_intermediate_size=config.moe_intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_attention_heads,
        n_shared_experts=(config.shared_expert_intermediate_size or 0) // config.moe_intermediate_size,
        n_routed_experts=config.num_experts, routed_scaling_factor=config.routed_scaling_factor,
        kv_lora_rank=config.kv_lora_rank, q_lora_rank=config.q_lora_rank, qk_rope_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim, qk_nope_head_dim=config.qk_nope_head_dim, n_group=config.n_group,
        topk_group=config.topk_group, num_experts_per_tok=config.num_experts_per_tok,
        first_k_dense_replace=config.ffn_types.count("mlp"), norm_topk_prob=config.norm_topk_prob,
        hidden_act=config.hidden_act, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps, rope_parameters=dict(config.rope_parameters),
        attention_bias=config.attention_bias, attention_dropout=config.attention_dropout,
        tie_word_embeddings=config.tie_word_embeddings, initializer_range=config.initializer_range,
        use_cache=config.use_cache, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, num_nextn_predict_layers=config.num_nextn_predict_layers,
    )
    if target == "deepseek_v2":
        method = "group_limited_greedy" if config.n_group > 1 else "greedy"
        return DeepseekV2Config(**fields, topk_method=method, head_dim=config.qk_rope_head_dim)
    if target == "deepseek_v32":
        return DeepseekV32Config(
            **fields, mlp_layer_types=["sparse" if f == "moe" else "dense" for f in config.ffn_types],
            index_n_heads=config.index_n_heads, index_head_dim=config.index_head_dim, index_topk=config.index_topk,
        )
    return DeepseekV3Config(**fields, rope_interleave=config.rope_interleave)
