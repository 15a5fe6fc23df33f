"""Self-speculative greedy decoding with the first MTP module as the drafter.

    model.generate(input_ids, custom_generate=hf_llmarch.mtp_generate, max_new_tokens=64)

Each step feeds the main model the token it just chose, x, and the MTP draft d for the token
after it, in one forward. The main model's choice after x is checked against d: equal, both are
kept along with the model's choice after d (two tokens for one forward); different, only the
model's own choice is kept and d's keys are cropped from the cache. Every kept token is the main
model's greedy choice, so the output equals plain greedy decoding. The MTP module extends its own
cache only with verified positions, so it never needs a rollback. Batch size 1, greedy, attention
stacks (a recurrent state cannot be cropped). `model.last_mtp_generation` holds the counts.
"""

import copy

import torch
from transformers import DynamicCache
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .. import compat
from .mtp import run_mtp_layer


def mtp_generate(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=None, **model_kwargs):
    """transformers' decoding-method signature (`custom_generate`); returns the sequences (or a
    GenerateDecoderOnlyOutput with `return_dict_in_generate`)."""
    _check_supported(model, input_ids, generation_config, model_kwargs.get("attention_mask"))
    cache = model_kwargs.get(compat.CACHE_ARG) or DynamicCache(config=model.config)
    drafter, drafter_cache = model.mtp.layers[0], _drafter_cache(model.config)
    stats = {"drafted": 0, "accepted": 0, "main_forwards": 1}
    hidden = model.model(input_ids=input_ids, cache=cache, use_cache=True).last_hidden_state  # [1, T, H]
    sequence, done = _append(input_ids, [_choose(model, logits_processor, input_ids, hidden[:, -1])], stopping_criteria, streamer)
    draft = _draft(model, drafter, drafter_cache, hidden, sequence, start=0)
    while not done:
        step_hidden = model.model(input_ids=torch.cat([sequence[:, -1:], draft], 1), cache=cache, use_cache=True).last_hidden_state
        stats["main_forwards"] += 1
        stats["drafted"] += 1
        first = _choose(model, logits_processor, sequence, step_hidden[:, 0])
        if torch.equal(first, draft[:, 0]):
            stats["accepted"] += 1
            second = _choose(model, logits_processor, torch.cat([sequence, draft], 1), step_hidden[:, 1])
            new_tokens, verified = [first, second], step_hidden
        else:
            cache.crop(-1)  # the rejected draft's keys
            new_tokens, verified = [first], step_hidden[:, :1]
        start = sequence.shape[1] - 1
        sequence, done = _append(sequence, new_tokens, stopping_criteria, streamer)
        if not done:
            draft = _draft(model, drafter, drafter_cache, verified, sequence, start=start)
    stats["acceptance_rate"] = stats["accepted"] / max(stats["drafted"], 1)
    model.last_mtp_generation = stats
    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequence, **compat.cache_kwargs(cache))
    return sequence


def _drafter_cache(config) -> DynamicCache:
    """A cache for the MTP modules, one layer each, of the stack's last layer type (a sparse-attention
    layer also keeps its indexer's keys)."""
    view = copy.copy(config)
    view.num_hidden_layers = config.num_nextn_predict_layers
    view.layer_types = config.layer_types[-1:] * config.num_nextn_predict_layers
    return DynamicCache(config=view)


def _check_supported(model, input_ids, generation_config, attention_mask):
    if not hasattr(model, "mtp"):
        raise ValueError("mtp_generate drafts with the MTP modules: this model has num_nextn_predict_layers=0")
    if model._is_stateful:
        raise ValueError("mtp_generate crops rejected drafts from the cache, which a recurrent state cannot undo")
    if input_ids.shape[0] != 1:
        raise ValueError(f"mtp_generate decodes one sequence at a time, got a batch of {input_ids.shape[0]}")
    if generation_config.do_sample or generation_config.num_beams != 1:
        raise ValueError("mtp_generate is greedy: set do_sample=False and num_beams=1")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("mtp_generate takes an unpadded prompt: its attention_mask has zeros")


def _choose(model, logits_processor, sequence, hidden) -> torch.Tensor:
    """[1] the greedy token after `sequence` from the main model's state [1, H] for its last position."""
    scores = logits_processor(sequence, model.logits(hidden).float())
    return scores.argmax(-1)


def _append(sequence, tokens, stopping_criteria, streamer) -> tuple[torch.Tensor, bool]:
    """`sequence` with `tokens` appended one at a time, stopping exactly where greedy decoding would."""
    for token in tokens:
        sequence = torch.cat([sequence, token[:, None]], 1)
        if streamer is not None:
            streamer.put(token.cpu())
        if bool(stopping_criteria(sequence, None).all()):
            return sequence, True
    return sequence, False


def _draft(model, drafter, drafter_cache, hidden, sequence, start: int) -> torch.Tensor:
    """[1, 1] the drafter's guess for the token after `sequence`. `hidden` [1, n, H] holds the main
    model's states of positions start..start+n-1, each paired with the token after it."""
    n = hidden.shape[1]
    positions = torch.arange(start, start + n, device=hidden.device)[None]
    embeds = model.model.embed_tokens(sequence[:, start + 1 : start + 1 + n])
    states, _ = run_mtp_layer(model, drafter, drafter.project(embeds, hidden), None, positions, drafter_cache)
    return model.logits(drafter.shared_head_norm(states[:, -1:])).argmax(-1)
