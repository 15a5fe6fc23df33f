"""Hyena operator (Poli et al. 2023; safari's HyenaOperator; recurrent_mixers.md §8), pattern name `hyena`.

in_proj -> short causal depthwise conv over all (N+1)d channels -> split x0, x1, .., x_{N-1}, v; then
for x_i in x_{N-1}, .., x1: v <- h_o * (x_i v) + bias_o (x_i v) (a causal long convolution per
channel, `ops/hyena`); y = out_proj(x0 v). The filters h_o come from `HyenaImplicitFilter`: an MLP
with sine activations over positional features, times an exponential decay window, generated up
to `hyena_max_len` taps (longer inputs are refused).

Decode keeps the exact input history, not a distilled recurrence: the cache holds every long-conv
input seen so far, [B, (N-1)d, t] (all orders stacked on channels), and a new token's output is one
dot product per channel with the reversed filter, O(t d). The filter is an arbitrary MLP output, not
a finite-state system, so a constant-size state needs distillation into a modal SSM (Laughing
Hyena): approximate, and a fitting step per checkpoint. The history is exact, like a KV cache, and
like one it grows: (N-1) d values per token per layer, so the state bytes are NOT constant. The
short conv keeps its usual [B, (N+1)d, K-1] window beside it.

Padding: pads enter the short conv as zeros (exact for left padding; its cached window keeps each
row's last real inputs) and the long-conv inputs are zero at pads. The long conv is indexed by
distance in positions, so a pad must not sit between real tokens: each row's stream [cached;
new] is compacted, pads moved to its front (stable, real order kept) where a zero input adds
nothing. Left- and right-padded rows therefore equal their unpadded selves, and the cached
history is the compacted stream. Packed sequences (`sequence_starts`) restart both convolutions;
the cache then keeps only each row's last sequence.

Differences from safari: the positional features are fixed (safari trains them at lr 1e-5),
each of the three sines has its own frequency (safari reuses one Sin module, so its state dict
repeats one tensor under three names), and inputs past hyena_max_len raise instead of being cut.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from ..ops.hyena import VALID_MODES, long_conv, long_conv_step
from .registry import check_positive_ints, fill_config_defaults
from .ssm_common import cached_short_conv
from .state import read_recurrent_state

CONFIG_FIELDS = {
    "hyena_order": 2,  # N: N-1 long convolutions, N+1 projected streams
    "hyena_filter_order": 64,  # width of the implicit filter MLP
    "hyena_filter_emb_dim": 33,  # positional features: t and (emb_dim - 1) / 2 cos/sin bands
    "hyena_filter_sine_freq": 14.0,  # initial frequency of the MLP's sine activations
    "hyena_short_conv_size": 3,
    "hyena_max_len": None,  # None: max_position_embeddings; the filter has this many taps
    "hyena_mode": "auto",  # long conv path: auto, fft, naive (env LLMARCH_HYENA_MODE)
}
# safari's ExponentialModulation: decay rates |delta| from ln(1e-2)/1.5 to ln(1e-2)/0.3 per unit of
# normalised time (the window reaches 1e-2 at 150% .. 30% of hyena_max_len).
DECAY_TARGET, SLOW_DECAY, FAST_DECAY = 1e-2, 1.5, 0.3


class Sin(nn.Module):
    """sin(freq x) with a trainable frequency per feature (safari's `Sin`)."""

    def __init__(self, dim: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, dim), float(freq)))

    def forward(self, x):
        return torch.sin(self.freq * x)


class HyenaImplicitFilter(nn.Module):
    """The N-1 long filters, h [N-1, d, L], from an MLP over positional features times a decay
    window, plus their skip `bias` [(N-1) d] (safari's HyenaFilter over (N-1) d channels)."""

    def __init__(self, config):
        super().__init__()
        self.orders, self.hidden_size = config.hyena_order - 1, config.hidden_size
        self.emb_dim, self.max_len, self.sine_freq = config.hyena_filter_emb_dim, config.hyena_max_len, config.hyena_filter_sine_freq
        width, channels = config.hyena_filter_order, self.orders * self.hidden_size
        self.implicit_filter = nn.Sequential(
            nn.Linear(self.emb_dim, width), Sin(width, self.sine_freq),
            nn.Linear(width, width), Sin(width, self.sine_freq),
            nn.Linear(width, width), Sin(width, self.sine_freq),
            nn.Linear(width, channels, bias=False),
        )
        self.bias = nn.Parameter(torch.empty(channels))

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """safari's init: torch's default Linear init in the MLP, the sine frequency, bias ~ N(0, 1)."""
        for module in self.implicit_filter:
            if isinstance(module, Sin):
                init.constant_(module.freq, self.sine_freq)
                continue
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        init.normal_(self.bias)

    def forward(self, length: int, kept: dict | None = None, key=None):
        """(h [N-1, d, length], bias [N-1, d]). Without autograd, `kept` (a dict living as long as one
        cache) keeps the filter under `key` at a power-of-two span: decode would otherwise rerun the
        MLP over every position for each token. Tap l never depends on how many taps are built, and
        a cache already assumes the weights stay fixed."""
        bias = self.bias.view(self.hidden_size, self.orders).T  # safari's (d o) channel order
        if kept is None or torch.is_grad_enabled():
            return self._filter(length), bias
        if key not in kept or kept[key].shape[-1] < length:
            kept[key] = self._filter(min(self.max_len, 1 << (length - 1).bit_length()))
        return kept[key][..., :length], bias

    def _filter(self, length: int) -> torch.Tensor:
        weight = self.implicit_filter[0].weight
        z, t = positional_features(self.emb_dim, self.max_len, length, weight.device, weight.dtype)
        rates = torch.linspace(
            math.log(DECAY_TARGET) / SLOW_DECAY, math.log(DECAY_TARGET) / FAST_DECAY, self.orders * self.hidden_size,
            device=weight.device, dtype=weight.dtype,
        ).abs()  # [(N-1) d], fixed: safari's modulation_lr = 0
        h = self.implicit_filter(z) * torch.exp(-t[:, None] * rates)  # [length, (N-1) d]
        return h.T.reshape(self.hidden_size, self.orders, length).transpose(0, 1)  # channels (d o), as safari


def positional_features(emb_dim: int, max_len: int, length: int, device, dtype):
    """safari's PositionalEmbedding for l_max = max_len, first `length` rows, computed on the fly (a
    buffer made in __init__ would stay empty after a meta-device load): t = n / (max_len - 1) and
    z = [t, cos(2 pi f n / max_len), -sin(2 pi f n / max_len)] with f = linspace(1e-4, K-1, K),
    K = (emb_dim - 1) / 2. Returns z [length, emb_dim], t [length]."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    t = torch.linspace(0, 1, max_len, device=device, dtype=work)[:length]
    bands = (emb_dim - 1) // 2
    freqs = torch.linspace(1e-4, bands - 1, bands, device=device, dtype=work)
    angle = 2 * math.pi * torch.arange(length, device=device, dtype=work)[:, None] * freqs / max_len  # [length, K]
    z = torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1)
    return z.to(dtype), t.to(dtype)


class LlmArchHyena(nn.Module):
    block_attr = "hyena"
    config_fields = CONFIG_FIELDS

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size, self.order = config.hidden_size, config.hyena_order
        self.max_len, self.mode = config.hyena_max_len, config.hyena_mode
        streams = (self.order + 1) * self.hidden_size
        width = config.hyena_short_conv_size
        self.in_proj = nn.Linear(self.hidden_size, streams)
        self.short_filter = nn.Conv1d(streams, streams, width, groups=streams, padding=width - 1)
        self.filter_fn = HyenaImplicitFilter(config)
        self.out_proj = nn.Linear(self.hidden_size, self.hidden_size)

    @staticmethod
    def validate(config) -> None:
        if getattr(config, "hyena_max_len", None) is None:
            config.hyena_max_len = config.max_position_embeddings
        fill_config_defaults(config, CONFIG_FIELDS)
        check_positive_ints(config, "hyena_order", "hyena_filter_order", "hyena_filter_emb_dim", "hyena_short_conv_size", "hyena_max_len")
        if config.hyena_order < 2:
            raise ValueError(
                f"hyena_order={config.hyena_order}: a Hyena filter order below 2 has no long convolution "
                "(order N gates N-1 of them); use 2 or more"
            )
        if config.hyena_filter_emb_dim < 3 or config.hyena_filter_emb_dim % 2 == 0:
            raise ValueError(
                f"hyena_filter_emb_dim={config.hyena_filter_emb_dim} must be odd and >= 3: time plus cos/sin pairs"
            )
        if config.hyena_short_conv_size < 2:
            raise ValueError(f"hyena_short_conv_size={config.hyena_short_conv_size} must be an integer >= 2 (the short conv's width)")
        freq = config.hyena_filter_sine_freq
        if isinstance(freq, bool) or not isinstance(freq, (int, float)) or not freq > 0:
            raise ValueError(f"hyena_filter_sine_freq={freq!r} must be a positive number")
        if config.hyena_mode not in VALID_MODES:
            raise ValueError(f"hyena_mode={config.hyena_mode!r} is unknown; valid: {list(VALID_MODES)}")

    def forward(self, hidden_states, attention_mask=None, cache=None, sequence_starts=None, **kwargs):
        """`attention_mask`: the [B, T] bool token mask (None: nothing padded); `sequence_starts`
        [B, T] bool: packed sequences restart both convolutions there."""
        history = read_recurrent_state(cache, self.layer_idx)  # [B, (N-1) d, t] or None
        past, seq_len = (0 if history is None else history.shape[-1]), hidden_states.shape[1]
        if past + seq_len > self.max_len:
            raise ValueError(
                f"hyena_max_len={self.max_len}: this call needs {past + seq_len} filter taps ({past} cached + {seq_len} new "
                "tokens), but the implicit filter is generated only up to hyena_max_len; raise it or shorten the input"
            )
        u = self.in_proj(hidden_states)  # [B, T, (N+1) d]
        mask = None if attention_mask is None else attention_mask[..., None].to(u.dtype)  # [B, T, 1]
        if mask is not None:
            u = u * mask  # pads enter the short conv as zeros
        u = cached_short_conv(self.short_filter, u, attention_mask, cache, self.layer_idx, sequence_starts)
        *x, v = u.split(self.hidden_size, dim=-1)  # x0 .. x_{N-1}, v: [B, T, d] each
        h, bias = self.filter_fn(past + seq_len, _kept_filters(cache), self.layer_idx)
        perm, reset = _stream_layout(attention_mask, sequence_starts, past)
        streams = []
        for o, x_i in enumerate(reversed(x[1:])):
            v = x_i * v if mask is None else x_i * v * mask
            stream = v if history is None else torch.cat([self._cached(history, o), v], dim=1)  # [B, t+T, d]
            if perm is not None:
                stream = stream.gather(1, perm[..., None].expand_as(stream))
            streams.append(stream)
            v = self._long_conv(stream, h[o], bias[o], perm, reset, seq_len)
        if cache is not None:
            _write_history(cache, self.layer_idx, torch.cat(streams, dim=-1).transpose(1, 2), reset)
        return self.out_proj(x[0] * v), None

    def _cached(self, history, o: int) -> torch.Tensor:
        """Order o's cached inputs [B, t, d]."""
        return history[:, o * self.hidden_size : (o + 1) * self.hidden_size].transpose(1, 2)

    def _long_conv(self, stream, h, bias, perm, reset, new: int) -> torch.Tensor:
        """Outputs [B, new, d] of the long conv over the (compacted) stream [B, t+T, d], in input
        order. One new token reads the history by a dot product per channel, not a convolution."""
        if new == 1 and perm is None and reset is None:
            return long_conv_step(stream.transpose(1, 2), h, bias)[:, None]
        y = long_conv(stream, h, bias, reset=reset, mode=self.mode)
        if perm is not None:
            y = torch.empty_like(y).scatter(1, perm[..., None].expand_as(y), y)
        return y[:, -new:]


def _stream_layout(token_mask, sequence_starts, past: int):
    """(perm [B, t+T] or None: each row's order with the new chunk's pads first and real inputs in
    order, the cached ones counted real; reset [B, t+T] or None: sequence starts in that order)."""
    reset = None if sequence_starts is None else F.pad(sequence_starts, (past, 0))
    if token_mask is None:
        return None, reset
    real = F.pad(token_mask.bool(), (past, 0), value=True)
    perm = torch.argsort(real.int(), dim=1, stable=True)
    return perm, None if reset is None else reset.gather(1, perm)


def _kept_filters(cache) -> dict | None:
    """The filters built during this cache's generation, by layer (None without a cache)."""
    if cache is None:
        return None
    if not hasattr(cache, "llmarch_hyena_filters"):
        cache.llmarch_hyena_filters = {}
    return cache.llmarch_hyena_filters


def _write_history(cache, layer_idx: int, history, reset) -> None:
    """Store the long-conv inputs [B, (N-1) d, t+T]; after packed sequences only each row's last.
    transformers' LinearAttentionLayer copies a state into the tensor of its first write (a fixed
    shape), so the growing history replaces it after that; beam reordering still index_selects it."""
    if reset is not None:
        segment = reset.long().cumsum(-1)  # [B, t+T]
        history = history * (segment == segment[:, -1:])[:, None].to(history.dtype)
    if read_recurrent_state(cache, layer_idx) is None:
        cache.update_recurrent_state(history, layer_idx)
    else:
        cache.layers[layer_idx].recurrent_states[0] = history
