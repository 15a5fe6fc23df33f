"""Mixers side by side in one layer, pattern name `par(a,b)` (Falcon-H1: `par(attn,mamba2)`).

Each part reads the same normed input, scaled by its `parallel_in_multipliers` entry, and the
layer's mixer output is the sum of the parts' outputs, each scaled by its
`parallel_out_multipliers` entry (Falcon-H1's attention/SSM in and out muP multipliers; a missing
entry is 1). One attention part and one recurrent part: transformers' `hybrid` cache layer
(`hybrid_sliding` with `swa`) holds the KV cache and the conv/SSM states of the same layer index.
The attention part reads the layer's 4D mask, the recurrent part the [B, T] token mask and the
packed-sequence starts, exactly as each does in a layer of its own.
"""

from torch import nn

from ..pattern import parallel_parts
from .registry import MIXER_LAYER_TYPES, PARALLEL_BLOCK_ATTR, fill_config_defaults

CONFIG_FIELDS = {"parallel_in_multipliers": None, "parallel_out_multipliers": None}


class LlmArchParallelMixer(nn.Module):
    block_attr = PARALLEL_BLOCK_ATTR
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int, part_classes: dict[str, type]):
        super().__init__()
        self.layer_idx = layer_idx
        in_multipliers = config.parallel_in_multipliers or {}
        out_multipliers = config.parallel_out_multipliers or {}
        # (attribute, is recurrent, in multiplier, out multiplier) per part, in pattern order.
        self.parts = []
        for name in parallel_parts(config.mixer_types[layer_idx]):
            mixer = part_classes[name](config, layer_idx)
            setattr(self, mixer.block_attr, mixer)
            recurrent = MIXER_LAYER_TYPES[name] == "linear_attention"
            self.parts.append((mixer.block_attr, recurrent, in_multipliers.get(name, 1.0), out_multipliers.get(name, 1.0)))

    @staticmethod
    def validate(config) -> None:
        """The multiplier dicts map a part's pattern name (e.g. "mamba2") to a positive float."""
        fill_config_defaults(config, CONFIG_FIELDS)
        names = {part for mixer in config.mixer_types for part in parallel_parts(mixer) or ()}
        for field in CONFIG_FIELDS:
            multipliers = getattr(config, field) or {}
            if not isinstance(multipliers, dict):
                raise ValueError(f"{field}={multipliers!r} must map a par() part's name to a float, e.g. {{'mamba2': 0.25}}")
            for name, value in multipliers.items():
                if name not in names:
                    raise ValueError(f"{field} names {name!r}, which no par() layer holds; parts in this stack: {sorted(names)}")
                if not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{field}[{name!r}]={value!r} must be a positive float")

    def forward(self, hidden_states, attention_mask=None, token_mask=None, sequence_starts=None, **kwargs):
        """`attention_mask`: the 4D mask of the attention part; `token_mask` [B, T] and
        `sequence_starts` [B, T]: the recurrent part's padding and packing (each may be None)."""
        total, attention_weights = None, None
        for attr, recurrent, in_multiplier, out_multiplier in self.parts:
            x = hidden_states * in_multiplier if in_multiplier != 1.0 else hidden_states
            if recurrent:
                out, _ = getattr(self, attr)(x, attention_mask=token_mask, sequence_starts=sequence_starts, **kwargs)
            else:
                out, attention_weights = getattr(self, attr)(x, attention_mask=attention_mask, **kwargs)
            out = out * out_multiplier if out_multiplier != 1.0 else out
            total = out if total is None else total + out
        return total, attention_weights
