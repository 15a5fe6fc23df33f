"""Parameters, active parameters, FLOPs per token and cache bytes per token, from a config alone.

Nothing here builds a model, so the figures are instant even for 100B-parameter shapes; the tests
check them against real (tiny) models: the parameter total equals `model.parameters()` exactly
and the cache figure equals the bytes a `DynamicCache` holds after `generate()`.

Each mixer and FFN kind is described by its parameters split into matmul weights (which cost
2 FLOPs per weight per token) and the rest (biases, norm weights, embedding tables). A new mixer
adds one entry to `_MIXER_PARAMS` (`params.py`; recurrent mixers' in `recurrent.py`) and, if it keeps a
fixed-size state, `MIXER_STATE` (`recurrent.py`).
"""

from .params import count_parameters
from .summary import format_summary, summarize
from .usage import cache_bytes_per_token, flops_per_token

__all__ = ["cache_bytes_per_token", "count_parameters", "flops_per_token", "format_summary", "summarize"]
