"""RWKV's channel mix, the FFN kind `rwkv_cmix` (recurrent_mixers.md §6, §6b), in its layer's version:

    RWKV-4: x_k = x mu_k + x_prev (1 - mu_k), x_r likewise;  out = sigmoid(W_r x_r) * W_v relu(W_k x_k)^2
    RWKV-7: x_k = x + (x_prev - x) x_k;                       out = W_v relu(W_k x_k)^2

It token-shifts like the time mix, so it lives only in layers whose mixer keeps the shift state
(rwkv4, rwkv7); its previous input is the second slot of that layer's shift state
(`mixers/token_shift.py`). Names and shapes: transformers' RwkvFeedForward, fla's RWKV7FeedForward.
"""

import torch
from torch import nn
from transformers import initialization as init

from ..mixers.token_shift import shift_tokens, zero_pads

# Mixers whose cache layer keeps the token-shift state the channel mix shares.
TOKEN_SHIFT_MIXERS = ("rwkv4", "rwkv7")


class LlmArchChannelMix(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.num_layers = layer_idx, config.num_hidden_layers
        hidden = config.hidden_size
        self.time_mix_key = nn.Parameter(torch.empty(1, 1, hidden))
        self.time_mix_receptance = nn.Parameter(torch.empty(1, 1, hidden))
        self.key = nn.Linear(hidden, config.intermediate_size, bias=False)
        self.receptance = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(config.intermediate_size, hidden, bias=False)

    @staticmethod
    def validate(config) -> None:
        for i, (mixer, ffn) in enumerate(zip(config.mixer_types, config.ffn_types)):
            if ffn == "rwkv_cmix" and mixer not in TOKEN_SHIFT_MIXERS:
                raise ValueError(
                    f"ffn_types[{i}]='rwkv_cmix' needs an RWKV mixer in its layer (one of {list(TOKEN_SHIFT_MIXERS)}), "
                    f"whose cache keeps the token shift it shares; mixer_types[{i}]={mixer!r}"
                )

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """BlinkDL's init: mixes by channel, shallower layers mixing more of the current token."""
        hidden = self.time_mix_key.shape[-1]
        channel = torch.arange(hidden, dtype=torch.float32)[None, None] / hidden
        remaining = 1.0 - self.layer_idx / self.num_layers
        init.copy_(self.time_mix_key, channel**remaining)
        init.copy_(self.time_mix_receptance, channel**remaining)

    def forward(self, hidden_states, cache=None, token_mask=None, sequence_starts=None):
        x = zero_pads(hidden_states, token_mask)
        shifted = shift_tokens(x, cache, self.layer_idx, 1, token_mask, sequence_starts)
        key = torch.square(torch.relu(self.key(x * self.time_mix_key + shifted * (1 - self.time_mix_key))))
        receptance = self.receptance(x * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance))
        return torch.sigmoid(receptance) * self.value(key)


class LlmArchChannelMix7(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.num_layers = layer_idx, config.num_hidden_layers
        self.x_k = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.key = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.value = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """BlinkDL's x070 init: x_k = 1 - (channel / C)^(remaining depth ^ 4)."""
        hidden = self.x_k.shape[-1]
        channel = torch.arange(hidden, dtype=torch.float32)[None, None] / hidden
        init.copy_(self.x_k, 1.0 - channel ** ((1.0 - self.layer_idx / self.num_layers) ** 4))

    def forward(self, hidden_states, cache=None, token_mask=None, sequence_starts=None):
        x = zero_pads(hidden_states, token_mask)
        shifted = shift_tokens(x, cache, self.layer_idx, 1, token_mask, sequence_starts)
        return self.value(torch.square(torch.relu(self.key(x + (shifted - x) * self.x_k))))


def build_channel_mix(config, layer_idx: int) -> nn.Module:
    """The channel mix of the layer's RWKV version."""
    cls = LlmArchChannelMix7 if config.mixer_types[layer_idx] == "rwkv7" else LlmArchChannelMix
    return cls(config, layer_idx)
