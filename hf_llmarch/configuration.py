"""The config base every family shares: the layer pattern, validation with clear errors, presets.

A family is a subclass that sets `model_type` and its defaults; all modeling code reads the
same fields. The per-layer stack lives in three parallel lists:

* `mixer_types` - our token-mixer name per layer (`attn`, `swa`, `retention`, ...);
* `ffn_types`   - `mlp`, `moe` or `none` per layer;
* `layer_types` - transformers' standard names derived from the mixers, so its cache
  machinery builds the right cache layer per layer.

`layer_pattern` is the compact string form (see `hf_llmarch.pattern`) and expands into the lists.
"""

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .compat import CACHE_NAMES
from .mixers.registry import (
    FFN_KINDS,
    GATED_MLP_TP,
    MASK_OF_LAYER_TYPE,
    MOE_EP_PLAN,
    PLAIN_MLP_TP,
    mixer_layer_type,
    mixer_tp_plan,
)
from .pattern import compress_pattern, expand_pattern

ROPE_TYPES = ("default", *ROPE_INIT_FUNCTIONS)
NORM_TYPES = ("rmsnorm", "layernorm")
POSITION_TYPES = ("rope", "learned", "sinusoidal", "relative_buckets", "none")
OP_MODES = {
    "moe_impl": ("auto", "naive", "grouped", "triton"),
    "retention_mode": ("auto", "parallel", "chunk", "recurrent", "naive"),
}


class LlmArchConfig(PreTrainedConfig):
    """Fields shared by every hf_llmarch family. Subclasses set `model_type` and defaults."""

    model_type = "llmarch"
    keys_to_ignore_at_inference = CACHE_NAMES  # Trainer drops the cache from eval outputs
    # Tensor parallelism (`tp_plan="auto"`): built per config from the kinds in the stack (see
    # `_tensor_parallel_plan`), so every entry names a parameter the model has.
    base_model_tp_plan: ClassVar[dict[str, str] | None] = None
    # Expert parallelism (`DistributedConfig(ep_size=...)`): only for stacks with `moe` layers.
    base_model_ep_plan: ClassVar[dict[str, str] | None] = None
    # A config built from `num_hidden_layers` alone repeats this unit.
    default_pattern: ClassVar[str] = "attn"
    default_ffn: ClassVar[str] = "mlp"

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int | None = None
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    layer_pattern: str | None = None
    mixer_types: list[str] | None = None
    ffn_types: list[str] | None = None
    layer_types: list[str] | None = None

    hidden_act: str = "silu"
    mlp_gated: bool = True  # SwiGLU-style gate_proj/up_proj/down_proj; False = GPT-2 up/act/down
    mlp_bias: bool = False
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    position_embedding_type: str = "rope"
    max_position_embeddings: int = 4096
    rope_parameters: dict | None = None
    attention_bias: bool = False  # bias on q/k/v (Qwen2, GPT-2)
    attention_out_bias: bool = False  # bias on o_proj (GPT-2)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3, OLMo-2)
    qkv_norm: bool = False  # parameter-free RMSNorm of each head's q, k and v (RedLLM)
    attention_output_norm: bool = False  # parameter-free RMSNorm of each head's output before o_proj (RedLLM)
    # Zero-centred RMSNorms (Qwen3-Next, Gemma): every backbone norm, and QK-norm, scales by 1 + weight,
    # the weight starting at 0.
    norm_unit_offset: bool = False
    sliding_window: int | None = None
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    # Scalings of muP-trained models (Granite): embeddings * embedding_multiplier, each residual branch
    # * residual_multiplier, attention scores * attention_multiplier (None = head_dim ** -0.5),
    # logits / logits_scaling. The defaults change nothing.
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # A norm on the embeddings before the first layer (RWKV's pre_ln, BLOOM's word_embeddings_layernorm).
    embedding_norm: bool = False
    # Mamba's `residual_in_fp32`: under bf16/fp16 weights the residual stream stays fp32 and each norm
    # reads it cast to its weight's dtype (the final norm's output goes to the head in the model dtype).
    residual_in_fp32: bool = False
    # DeepSeek-V3 multi-token prediction: this many MTP modules after the stack (0: none), their loss
    # added with this weight (models/mtp.py).
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.3
    # Falcon-H1's muP multipliers of the dense gated MLP: down(up(x) * act(gate(x) * m_gate)) * m_down.
    mlp_multipliers: list[float] | None = None
    # Topology (checked and documented in hf_llmarch/topology.py): which keys a query sees
    # (causal, bidirectional, prefix), where the norms sit (pre, post), BERT/ALBERT's embedding extras
    # (token types, a factorised embedding width, a position offset, shared layers), a decoder's
    # cross-attention, and T5's relative position buckets.
    attention_mask_kind: str = "causal"
    norm_placement: str = "pre"
    type_vocab_size: int = 0
    embedding_size: int | None = None
    position_offset: int = 0
    num_layer_groups: int | None = None
    cross_attention: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    moe_impl: str = "auto"
    # Router fields: None = the router's default, filled (and checked) by the MoE block's validate hook
    # (hf_llmarch/modules/routers.py, which documents each).
    router_type: str | None = None
    capacity_factor: float | None = None
    router_noise: float | None = None
    n_group: int | None = None
    topk_group: int | None = None
    routed_scaling_factor: float | None = None
    router_importance_loss_coef: float | None = None
    router_load_loss_coef: float | None = None
    router_seq_aux_loss_coef: float | None = None
    bias_update_rate: float | None = None
    # Shared experts (Qwen2-MoE, DeepSeekMoE): a dense MLP of this width that every token of an MoE
    # layer passes through beside its routed experts; None = none. DeepSeek's n_shared_experts
    # experts of width I are one MLP of width n * I. `shared_expert_gate` scales the shared output
    # per token by sigmoid(w . x), as Qwen2-MoE does.
    shared_expert_intermediate_size: int | None = None
    shared_expert_gate: bool = False

    retention_num_heads: int | None = None
    retention_value_factor: int = 2  # value dim = factor * key dim, as in RetNet
    retention_chunk_size: int = 64
    retention_mode: str = "auto"

    def __post_init__(self, **kwargs):
        self._expand_layers()
        self.base_model_tp_plan = self._tensor_parallel_plan()
        self.base_model_ep_plan = self._expert_parallel_plan()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads and self.hidden_size % self.num_attention_heads == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.retention_num_heads is None:
            self.retention_num_heads = self.num_attention_heads
        if self.position_embedding_type == "rope" and self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)
        self.validate_llmarch()

    def _expand_layers(self):
        """Fill mixer_types / ffn_types / layer_types / num_hidden_layers from whichever was given."""
        if self.layer_pattern is not None:
            layers = expand_pattern(self.layer_pattern, self.default_ffn)
            mixers, ffns = [m for m, _ in layers], [f for _, f in layers]
            for field, given, expanded in (("mixer_types", self.mixer_types, mixers), ("ffn_types", self.ffn_types, ffns)):
                if given is not None and list(given) != expanded:
                    raise ValueError(
                        f"{field}={list(given)} disagrees with layer_pattern={self.layer_pattern!r} "
                        f"(which expands to {expanded}); pass only one of them"
                    )
            self.mixer_types, self.ffn_types = mixers, ffns
        elif self.mixer_types is None:
            n = self.num_hidden_layers or 2
            unit = expand_pattern(self.default_pattern, self.default_ffn)
            layers = (unit * n)[:n]
            self.mixer_types, self.ffn_types = [m for m, _ in layers], [f for _, f in layers]
        self.mixer_types = list(self.mixer_types)
        if self.ffn_types is None:
            self.ffn_types = [self.default_ffn] * len(self.mixer_types)
        self.ffn_types = list(self.ffn_types)
        n = len(self.mixer_types)
        if self.num_hidden_layers is None:
            self.num_hidden_layers = n
        if self.num_hidden_layers != n or len(self.ffn_types) != n:
            raise ValueError(
                f"layer_pattern/mixer_types describe {n} layers and ffn_types {len(self.ffn_types)}, but "
                f"num_hidden_layers={self.num_hidden_layers}: make the pattern length equal the layer count"
            )
        derived = self._check_names()
        if self.layer_types is not None and list(self.layer_types) != derived:
            raise ValueError(
                f"layer_types={list(self.layer_types)} disagrees with mixer_types={self.mixer_types} "
                f"(which need {derived}); leave layer_types unset, it is derived"
            )
        self.layer_types = derived
        if self.layer_pattern is None:
            self.layer_pattern = compress_pattern(self.mixer_types, self.ffn_types)

    def _tensor_parallel_plan(self) -> dict[str, str]:
        """Megatron-style plan for the kinds this stack holds (attention and retention split by
        heads, dense MLPs by columns); an entry for an absent kind would match no parameter."""
        plan = {}
        for mixer in dict.fromkeys(self.mixer_types):
            plan |= mixer_tp_plan(mixer)
        mlp_tp = GATED_MLP_TP if self.mlp_gated else PLAIN_MLP_TP
        if "mlp" in self.ffn_types:
            plan |= mlp_tp
        if "moe" in self.ffn_types and self.shared_expert_intermediate_size:
            plan |= {name.replace("mlp.", "mlp.shared_expert.", 1): style for name, style in mlp_tp.items()}
        return {f"layers.*.{name}": style for name, style in plan.items()}

    def _expert_parallel_plan(self) -> dict[str, str] | None:
        """Whole experts per rank, as Mixtral's plan; None without MoE layers, so `ep_size > 1` then
        fails in from_pretrained with transformers' own "has no ep_plan" error."""
        if "moe" not in self.ffn_types:
            return None
        return {f"layers.*.{name}": style for name, style in MOE_EP_PLAN.items()}

    def _remove_keys_not_serialized(self, d: dict) -> None:
        # transformers strips base_model_tp_plan from config.json but not base_model_ep_plan (5.17 to
        # 5.24); like the tp plan it is derived from the stack, so it is never saved.
        super()._remove_keys_not_serialized(d)
        d.pop("base_model_ep_plan", None)

    def _check_names(self) -> list[str]:
        """Check every mixer and FFN name; returns the layer types the mixers need."""
        layer_types = []
        for i, mixer in enumerate(self.mixer_types):
            try:
                layer_types.append(mixer_layer_type(mixer))
            except ValueError as err:
                raise ValueError(f"mixer_types[{i}] (from layer_pattern {self.layer_pattern!r}): {err}") from None
        for i, ffn in enumerate(self.ffn_types):
            if ffn not in FFN_KINDS:
                raise ValueError(
                    f"ffn_types[{i}]={ffn!r} is not a known FFN kind (from layer_pattern "
                    f"{self.layer_pattern!r}); valid FFN kinds: {list(FFN_KINDS)}"
                )
        return layer_types

    def validate_llmarch(self):
        """Raise a ValueError naming the field and the fix for any inconsistent setting."""
        _positive(self, "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
        self._validate_attention()
        self._validate_choices()
        self._validate_positions()
        from .topology import validate_topology

        validate_topology(self)
        if "moe" in self.ffn_types:
            self._validate_moe()
        if "retention" in self.mixer_types:
            self._validate_retention()
        if "rwkv_cmix" in self.ffn_types:
            from .modules.channel_mix import LlmArchChannelMix

            LlmArchChannelMix.validate(self)
        # Mixers that own their fields (mamba, mamba2, s4d, ...) fill and check them. Imported lazily so
        # the config module loads no modeling code.
        from .mixers import validate_mixer_fields

        validate_mixer_fields(self)
        self._validate_mtp()
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id={self.pad_token_id} is outside the vocabulary (vocab_size={self.vocab_size}): "
                "use an id below vocab_size, or None for no pad token"
            )

    def _validate_attention(self):
        if self.head_dim is None:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}: "
                f"use num_attention_heads in {_divisors(self.hidden_size, limit=self.hidden_size // 8)} or set head_dim"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by num_key_value_heads="
                f"{self.num_key_value_heads}: each KV head must serve a whole group of query heads (GQA/MQA); "
                f"valid num_key_value_heads: {_divisors(self.num_attention_heads)}"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError(
                "layer_pattern uses sliding-window attention ('swa') but sliding_window is not set: "
                "set sliding_window to the window size in tokens"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window={self.sliding_window} must be a positive number of tokens")
        for field in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field}={getattr(self, field)!r} must be > 0")
        if self.mlp_multipliers is not None:
            if len(self.mlp_multipliers) != 2 or not all(m > 0 for m in self.mlp_multipliers):
                raise ValueError(f"mlp_multipliers={self.mlp_multipliers!r} must be [gate, down], two positive floats, or None")
            if not self.mlp_gated:
                raise ValueError("mlp_multipliers scale the gate of a gated MLP, but mlp_gated=False: set mlp_gated=True or drop them")
        if self.attention_multiplier is not None and not self.attention_multiplier > 0:
            raise ValueError(f"attention_multiplier={self.attention_multiplier!r} must be > 0, or None for head_dim ** -0.5")
        for field in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field}={getattr(self, field)!r} must lie in [0, 1): it is a drop probability")

    def _validate_choices(self):
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; use one of transformers' ACT2FN names, e.g. 'silu', 'gelu_new'")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} is unknown; valid: {list(NORM_TYPES)}")
        for field, valid in OP_MODES.items():
            if getattr(self, field) not in valid:
                raise ValueError(f"{field}={getattr(self, field)!r} is unknown; valid: {list(valid)}")

    def _validate_positions(self):
        if self.position_embedding_type not in POSITION_TYPES:
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r} is unknown; valid: {list(POSITION_TYPES)}")
        if self.position_embedding_type != "rope":
            return
        rope_type = self.rope_parameters.get("rope_type", self.rope_parameters.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_parameters['rope_type']={rope_type!r} is not a known RoPE scaling type; valid: {list(ROPE_TYPES)}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE: change head_dim or num_attention_heads")
        factor = self.rope_parameters.get("partial_rotary_factor", 1.0)
        if not 0.0 < factor <= 1.0 or int(self.head_dim * factor) % 2:
            raise ValueError(
                f"rope_parameters['partial_rotary_factor']={factor!r} must lie in (0, 1] and rotate an even number of "
                f"the head_dim={self.head_dim} channels"
            )
        try:
            self.validate_rope()
        except (KeyError, TypeError) as err:
            raise ValueError(f"rope_parameters={self.rope_parameters} is incomplete for rope_type {rope_type!r}: {err}") from err

    def _validate_moe(self):
        _positive(self, "num_experts", "num_experts_per_tok", "moe_intermediate_size")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} is larger than num_experts={self.num_experts}: "
                f"a token cannot be routed to more experts than exist; lower num_experts_per_tok to at most {self.num_experts}"
            )
        if self.shared_expert_intermediate_size is not None:
            _positive(self, "shared_expert_intermediate_size")
        elif self.shared_expert_gate:
            raise ValueError(
                "shared_expert_gate=True needs a shared expert to gate: set shared_expert_intermediate_size "
                "(the shared MLP's width), or leave shared_expert_gate False"
            )
        # The router fields (router_type, capacity_factor, n_group, ...) belong to the MoE block: it fills
        # their defaults and checks them. Imported lazily so the config module loads no modeling code.
        from .modules.moe import MoEFeedForward

        MoEFeedForward.validate(self)

    def _validate_mtp(self):
        depth = self.num_nextn_predict_layers
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"num_nextn_predict_layers={depth!r} must be a non-negative integer (0: no MTP modules)")
        if depth and MASK_OF_LAYER_TYPE[self.layer_types[-1]] == "linear_attention":
            raise ValueError(
                f"num_nextn_predict_layers={depth} needs an attention layer last (each MTP module is a layer of "
                f"that kind), but mixer_types[-1]={self.mixer_types[-1]!r} is recurrent"
            )
        if not self.mtp_loss_weight >= 0:
            raise ValueError(f"mtp_loss_weight={self.mtp_loss_weight!r} must be >= 0")

    def _validate_retention(self):
        _positive(self, "retention_num_heads", "retention_value_factor", "retention_chunk_size")
        if self.hidden_size % self.retention_num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by retention_num_heads={self.retention_num_heads}: "
                f"each retention head needs a whole key dimension; valid: {_divisors(self.hidden_size, limit=self.hidden_size // 8)}"
            )
        if (self.hidden_size // self.retention_num_heads) % 2:
            raise ValueError(
                f"retention head dim hidden_size/retention_num_heads={self.hidden_size // self.retention_num_heads} "
                f"must be even for the rotary on q and k; change retention_num_heads={self.retention_num_heads}"
            )


def _positive(config, *fields):
    for field in fields:
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field}={value!r} must be a positive integer")


def _divisors(n: int, limit: int | None = None) -> list[int]:
    """Divisors of n (up to `limit`), for error messages that say which values would work."""
    return [d for d in range(1, (limit or n) + 1) if n % d == 0]
