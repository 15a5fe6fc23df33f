"""Dense -> MoE upcycling (Komatsuzaki et al. 2022, "Sparse Upcycling"): every dense MLP becomes a
routed FFN whose experts start as the MLP, so the upcycled model computes the dense model's
function at step 0 and training only has to make the experts diverge.

* `granularity=1`: each expert is a copy of the MLP. The top-k weights are renormalised to sum to 1,
  so any router gives the dense output; the router starts random, so tokens spread over experts.
* `granularity=g > 1` (fine-grained experts, DeepSeekMoE-style): the MLP's intermediate dimension is
  cut into g slices (a SwiGLU MLP is exactly the sum of its slices) and expert e holds slice e % g
  with its down projection scaled by g. With a zero router and every expert active
  (top_k == num_experts), each expert weighs 1/E and the slices add back to the dense MLP.
"""

import torch
from transformers.initialization import no_init_weights

from ..models.causal_lm import LlmArchForCausalLM
from ..models.moe import LlmArchMoeConfig, LlmArchMoeForCausalLM

# Config keys that describe the source checkpoint, not the upcycled model.
_NOT_COPIED = ("model_type", "architectures", "transformers_version", "_name_or_path", "layer_pattern", "dtype")


def upcycle(model_or_path, num_experts: int, top_k: int, granularity: int = 1, seed: int = 0) -> LlmArchMoeForCausalLM:
    """An `LlmArchMoeForCausalLM` from a dense causal LM: ours, or a native one `from_hf` converts."""
    dense = load_as_ours(model_or_path)
    config = dense.config
    _check(config, num_experts, top_k, granularity)
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_COPIED}
    moe_config = LlmArchMoeConfig(**{
        **fields,
        "ffn_types": ["moe" if f == "mlp" else f for f in config.ffn_types],
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": config.intermediate_size // granularity,
        "norm_topk_prob": True,
        "router_type": "softmax_topk",
    })
    state_dict = _upcycled_state_dict(dense, moe_config, granularity, seed)
    with no_init_weights():
        model = LlmArchMoeForCausalLM._from_config(moe_config, dtype=dense.dtype)
    model.load_state_dict(state_dict, strict=True)
    model.tie_weights()
    return model.eval()


def load_as_ours(model_or_path) -> LlmArchForCausalLM:
    """Our model as it is, our checkpoint directory loaded, or a native model / directory converted."""
    if isinstance(model_or_path, LlmArchForCausalLM):
        return model_or_path
    from . import _load_ours, from_hf
    from .checkpoint import read_config_json

    is_ours = not isinstance(model_or_path, torch.nn.Module) and str(read_config_json(model_or_path).get("model_type")).startswith("llmarch_")
    return _load_ours(model_or_path) if is_ours else from_hf(model_or_path)


def _check(config, num_experts: int, top_k: int, granularity: int):
    if "mlp" not in config.ffn_types:
        raise ValueError(f"ffn_types={config.ffn_types}: there is no dense mlp layer to upcycle")
    if not config.mlp_gated:
        raise ValueError("mlp_gated=False: upcycling needs SwiGLU-style gate/up/down MLPs (the experts' layout)")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
    if granularity < 1 or num_experts % granularity or config.intermediate_size % granularity:
        raise ValueError(
            f"granularity={granularity} must divide num_experts={num_experts} and intermediate_size={config.intermediate_size}"
        )
    if granularity > 1 and top_k != num_experts:
        raise ValueError(
            f"granularity={granularity} reproduces the dense model only with every expert active: "
            f"set top_k={num_experts} (lower it after upcycling, when training breaks the symmetry)"
        )


def _upcycled_state_dict(dense, moe_config, granularity: int, seed: int) -> dict:
    state_dict = dict(dense.state_dict())
    generator = torch.Generator().manual_seed(seed)
    for i, ffn in enumerate(dense.config.ffn_types):
        if ffn == "mlp":
            state_dict |= _experts_from_mlp(state_dict, f"model.layers.{i}.mlp.", moe_config, granularity, generator)
    return state_dict


def _experts_from_mlp(state_dict: dict, prefix: str, config, granularity: int, generator) -> dict:
    """The router and fused experts of one layer from its MLP (whose keys leave `state_dict`)."""
    gate, up, down = (state_dict.pop(f"{prefix}{name}.weight") for name in ("gate_proj", "up_proj", "down_proj"))
    e, g = config.num_experts, granularity
    gate_s, up_s = gate.chunk(g, dim=0), up.chunk(g, dim=0)  # g x [I/g, H]
    down_s = [d * g for d in down.chunk(g, dim=1)]  # g x [H, I/g]
    router = torch.zeros(e, gate.shape[1], dtype=gate.dtype)  # [E, H]
    if g == 1:  # any router gives the dense output; a random one spreads the tokens
        router.normal_(0.0, config.initializer_range, generator=generator)
    return {
        f"{prefix}gate.weight": router,
        f"{prefix}experts.gate_up_proj": torch.stack([torch.cat([gate_s[j % g], up_s[j % g]]) for j in range(e)]),  # [E, 2I/g, H]
        f"{prefix}experts.down_proj": torch.stack([down_s[j % g] for j in range(e)]),  # [E, H, I/g]
    }
