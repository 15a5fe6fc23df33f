"""Mixtral / Qwen2-MoE / Qwen3-MoE <-> llmarch_moe.

In memory their module names are ours one to one (`mlp.gate`, `mlp.experts.gate_up_proj
[E, 2I, H]`, `mlp.experts.down_proj [E, H, I]`, and `mlp.{gate,up,down}_proj` in Qwen3-MoE's dense
layers; Qwen2-MoE's gated shared expert `mlp.shared_expert.*` and `mlp.shared_expert_gate` too). On disk (the Hub's checkpoints, and what transformers' save_pretrained writes) each
expert is separate: Mixtral `block_sparse_moe.experts.E.w1/w3/w2` (gate/up/down) and
`block_sparse_moe.gate`, Qwen2/3-MoE `mlp.experts.E.gate_proj/up_proj/down_proj`; reading fuses
them. Attention follows the dense adapter of the family it copies (Mixtral: Mistral's, Qwen2-MoE:
Qwen2's with q/k/v bias when `qkv_bias`, Qwen3-MoE: Qwen3's with QK-norm). All route with a softmax
top-k, Mixtral always renormalising the kept weights, the Qwens when `norm_topk_prob`. None has a
z-loss.
"""

import logging

import torch
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from ..models.moe import LlmArchMoeConfig, LlmArchMoeForCausalLM
from . import llama

logger = logging.getLogger(__name__)

OURS = (LlmArchMoeConfig, LlmArchMoeForCausalLM)
FFN_KINDS = ("mlp", "moe")
NATIVE_CLASSES = {
    "mixtral": (MixtralConfig, MixtralForCausalLM),
    "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
}
MIXER_KINDS = dict.fromkeys(NATIVE_CLASSES, ("attn", "swa"))
ATTENTION_LIKE = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}
IGNORED_KEYS = llama.IGNORED_KEYS
EMBED_KEY = llama.EMBED_KEY
state_dict_to_hf = llama.state_dict_to_hf
# On-disk layout per source: the MoE block's module name and each expert's gate / up / down names.
PER_EXPERT_LAYOUT = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "qwen3_next": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}


def config_from_hf(cfg) -> dict:
    n = cfg.num_hidden_layers
    if cfg.model_type == "qwen2_moe":  # windows the layers its layer_types say, as Qwen2 does
        mixers = llama.mixers_from_layer_types(cfg)
    else:  # window every layer when sliding_window is set (Qwen3-MoE: when use_sliding_window)
        mixers = ["attn" if cfg.sliding_window is None else "swa"] * n
    fields = llama.config_from_hf(cfg, model_type=ATTENTION_LIKE[cfg.model_type], mixers=mixers)
    if cfg.model_type == "mixtral":
        if cfg.router_jitter_noise:
            logger.warning("router_jitter_noise=%s (training-time only) has no counterpart here and is dropped", cfg.router_jitter_noise)
        fields.update(ffn_types=["moe"] * n, num_experts=cfg.num_local_experts, moe_intermediate_size=cfg.intermediate_size, norm_topk_prob=True)
    else:
        fields.update(
            ffn_types=[qwen_moe_ffn(cfg, i) for i in range(n)],
            num_experts=cfg.num_experts,
            moe_intermediate_size=cfg.moe_intermediate_size,
            norm_topk_prob=cfg.norm_topk_prob,
        )
    if cfg.model_type == "qwen2_moe":
        fields.update(
            attention_bias=cfg.qkv_bias,
            shared_expert_intermediate_size=cfg.shared_expert_intermediate_size,
            shared_expert_gate=True,
        )
    fields.update(num_experts_per_tok=cfg.num_experts_per_tok, router_aux_loss_coef=cfg.router_aux_loss_coef, router_z_loss_coef=0.0)
    return fields


def state_dict_from_hf(src, expected: dict[str, tuple], config) -> dict:
    """Ours from native, in memory (fused experts, our names) or on disk (one tensor per expert)."""
    prefix = "model." if any(k.startswith("model.") for k in src.keys()) else ""
    state_dict = {}
    for key, shape in expected.items():
        native = prefix + key.removeprefix("model.")
        routed = ".mlp.experts." in key or key.endswith(".mlp.gate.weight")
        if native in src or not routed:
            state_dict[key] = src.take(native, shape)
        else:
            state_dict[key] = _from_per_expert(src, native, shape, config.converted_from)
    return state_dict


def _from_per_expert(src, native: str, shape: tuple, model_type: str):
    """A routed tensor of ours from the on-disk layout: the router, or fused experts."""
    block, names = PER_EXPERT_LAYOUT[model_type]
    native = native.replace(".mlp.", f".{block}.")
    if native.endswith("gate.weight"):
        return src.take(native, shape)
    experts, fused = native.rsplit(".", 1)  # model.layers.N.<block>.experts, gate_up_proj | down_proj
    return fused_experts(src, experts, names, fused, shape)


def fused_experts(src, experts: str, names: tuple[str, str, str], fused: str, shape: tuple) -> torch.Tensor:
    """Our `fused` experts tensor, gate_up_proj [E, 2I, H] (each expert's [I, H] gate over its [I, H]
    up) or down_proj [E, H, I], from one tensor per expert `{experts}.{i}.{name}.weight` (names:
    the gate, up and down projections' names)."""
    gate, up, down = names
    if fused == "gate_up_proj":
        e, two_i, h = shape
        return torch.stack(
            [torch.cat([src.take(f"{experts}.{i}.{name}.weight", (two_i // 2, h)) for name in (gate, up)]) for i in range(e)]
        )
    e, h, inner = shape
    return torch.stack([src.take(f"{experts}.{i}.{down}.weight", (h, inner)) for i in range(e)])


def qwen_moe_ffn(cfg, layer: int) -> str:
    """Qwen2-MoE's, Qwen3-MoE's and Qwen3-Next's rule for a sparse layer."""
    sparse = layer not in cfg.mlp_only_layers and cfg.num_experts > 0 and (layer + 1) % cfg.decoder_sparse_step == 0
    return "moe" if sparse else "mlp"


def check_expressible(config, target: str):
    _check_shared_expert(config, target)
    llama.check_expressible(config, target if target == "qwen2_moe" else ATTENTION_LIKE[target])
    if config.router_type not in (None, "softmax_topk"):
        raise ValueError(f"router_type={config.router_type!r} cannot be expressed in {target}, which routes with a softmax top-k")
    swa = [m == "swa" for m in config.mixer_types]
    if target != "qwen2_moe" and any(swa) and not all(swa):
        raise ValueError(f"mixer_types={config.mixer_types}: {target} windows all layers or none")
    if target == "mixtral" and set(config.ffn_types) != {"moe"}:
        raise ValueError(f"ffn_types={config.ffn_types}: mixtral has an MoE FFN in every layer")
    if target == "mixtral" and not config.norm_topk_prob:
        raise ValueError("norm_topk_prob=False cannot be expressed in mixtral, which always renormalises the top-k weights")
    if config.router_z_loss_coef:
        logger.warning("router_z_loss_coef=%s has no counterpart in %s and is dropped", config.router_z_loss_coef, target)


def _check_shared_expert(config, target: str):
    """Qwen2-MoE has a gated shared expert in every MoE layer; Mixtral and Qwen3-MoE have none."""
    shared = bool(config.shared_expert_intermediate_size)
    if target == "qwen2_moe" and not (shared and config.shared_expert_gate):
        raise ValueError(
            f"shared_expert_intermediate_size={config.shared_expert_intermediate_size}, shared_expert_gate="
            f"{config.shared_expert_gate}: qwen2_moe has a gated shared expert in every MoE layer; set both"
        )
    if target != "qwen2_moe" and shared:
        raise ValueError(
            f"shared_expert_intermediate_size={config.shared_expert_intermediate_size} cannot be expressed in {target}, "
            "which has no shared expert; use qwen2_moe"
        )


def config_to_hf(config, target: str):
    kwargs = llama.common_config_kwargs(config)
    swa = "swa" in config.mixer_types
    kwargs.update(
        num_experts_per_tok=config.num_experts_per_tok,
        router_aux_loss_coef=config.router_aux_loss_coef,
        sliding_window=config.sliding_window if swa else None,
    )
    if target == "mixtral":
        kwargs.update(num_local_experts=config.num_experts, intermediate_size=config.moe_intermediate_size)
    elif target == "qwen2_moe":
        kwargs.update(_qwen_moe_layers(config), qkv_bias=config.attention_bias, **llama.per_layer_windows(config))
        kwargs.update(shared_expert_intermediate_size=config.shared_expert_intermediate_size)
    else:
        kwargs.update(
            **_qwen_moe_layers(config),
            use_sliding_window=swa,
            attention_bias=config.attention_bias,
        )
    return NATIVE_CLASSES[target][0](**kwargs)


def _qwen_moe_layers(config) -> dict:
    """Qwen2/3-MoE's expert fields, with our dense layers as its `mlp_only_layers`."""
    return dict(
        num_experts=config.num_experts,
        moe_intermediate_size=config.moe_intermediate_size,
        norm_topk_prob=config.norm_topk_prob,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i, f in enumerate(config.ffn_types) if f == "mlp"],
    )
