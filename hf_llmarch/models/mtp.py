"""DeepSeek-V3 multi-token prediction (layers.md §2f): D sequential modules after the main model,
sharing its embedding and LM head. Module k (1..D) predicts the token k + 1 ahead:

    h'_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])      # h^0: the main model's output
    h^k  = Block_k(h')                                             # one layer of the stack's last kind
    P^k_i = softmax(head(shared_head_norm(h^k_i)))  -> t_{i+k+1}

L_MTP = (1/D) sum_k CE(P^k, t shifted by k + 1); the causal LM adds mtp_loss_weight * L_MTP to its
loss and returns L_MTP as `mtp_loss`. A target is skipped where its prediction would start from a
pad or cross a packed-sequence boundary. Module k's attention has its own cache index k, in a cache
of its own (used by MTP self-speculative decoding, `mtp_generate.py`).
"""

import torch
from torch import nn
from torch.nn import functional as F

from .. import compat
from ..modules.norms import build_norm
from .block import LlmArchBlock

IGNORE_INDEX = -100


class LlmArchMTPLayer(LlmArchBlock):
    """One MTP module: the projections into a block of the stack's last layer kind, and its head norm."""

    def __init__(self, config, depth: int):
        super().__init__(config, config.num_hidden_layers - 1)  # mixer and FFN kinds of the last layer
        for module in self.modules():  # its own cache: index k, not the main stack's (the mixer's parts too)
            if hasattr(module, "layer_idx"):
                module.layer_idx = depth
        self.enorm = build_norm(config)
        self.hnorm = build_norm(config)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.shared_head_norm = build_norm(config)

    def project(self, embeds, hidden):
        """h' [B, T, H] from the embeddings of the tokens k ahead and the previous depth's states."""
        return self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(hidden)], dim=-1))


class LlmArchMTP(nn.Module):
    """The D modules; `loss` runs them on a training batch."""

    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(LlmArchMTPLayer(config, k) for k in range(config.num_nextn_predict_layers))

    def loss(self, lm, hidden, input_ids, inputs_embeds, labels, attention_mask, position_ids):
        """(L_MTP, router aux loss of the MTP blocks or None) for the batch; `lm` is the causal LM
        (embedding, head, rotary and masks), `hidden` [B, T, H] the main model's output."""
        embeds = lm.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        seq_len = hidden.shape[1]
        positions = position_ids if position_ids is not None else torch.arange(seq_len, device=hidden.device)[None]
        losses, aux_losses = [], []
        for k, layer in enumerate(self.layers, start=1):
            if seq_len <= k:
                break
            n = seq_len - k  # positions i = 0..n-1 predict t_{i+k+1}
            window = slice(None, n)
            mask = None if attention_mask is None else attention_mask[:, window]
            hidden, aux = run_mtp_layer(lm, layer, layer.project(embeds[:, k:], hidden[:, window]), mask, positions[:, window])
            logits = lm.logits(layer.shared_head_norm(hidden[:, :-1]))
            targets = _targets(labels, attention_mask, position_ids, k).flatten()
            summed = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
            losses.append(summed / (targets != IGNORE_INDEX).sum().clamp_min(1))  # no target at this depth: 0, not NaN
            if aux is not None:
                aux_losses.append(aux)
        if not losses:
            return None, None
        aux = torch.stack(aux_losses).mean() if aux_losses else None
        return torch.stack(losses).mean(), aux


def run_mtp_layer(lm, layer, hidden, attention_mask, position_ids, cache=None):
    """(h^k [B, n, H], aux) for h' [B, n, H]: the block with the stack's masks and rotary for these positions."""
    from .masks import MASK_BUILDERS

    mask = MASK_BUILDERS[layer.mask_type](
        config=lm.config, inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
        **compat.cache_kwargs(cache), layer_idx=layer.layer_idx,  # its index in the MTP cache
    )
    rotary = lm.model.rotary_emb(hidden, position_ids) if hasattr(lm.model, "rotary_emb") else None
    token_mask = None if attention_mask is None or hidden.shape[1] == 1 else attention_mask.bool()
    return layer(
        hidden, attention_mask=mask, token_mask=token_mask, position_embeddings=rotary,
        position_ids=position_ids, cache=cache, use_cache=cache is not None,
    )


def _targets(labels, attention_mask, position_ids, k: int) -> torch.Tensor:
    """[B, T-k-1]: labels k + 1 ahead, ignored where position i is a pad or a packed sequence starts
    between i and the target."""
    targets = labels[:, k + 1 :].clone()
    n = targets.shape[1]
    if attention_mask is not None:
        targets[attention_mask[:, :n] == 0] = IGNORE_INDEX
    if position_ids is not None:
        starts = F.pad(position_ids[:, 1:] != position_ids[:, :-1] + 1, (1, 0)).long().cumsum(-1)  # [B, T] sequence id
        targets[(starts[:, k + 1 :] != starts[:, :n]).expand_as(targets)] = IGNORE_INDEX
    return targets
