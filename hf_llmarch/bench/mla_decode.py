"""The decode half of the mla suite: at each context, both models' caches are filled by a chunked
prefill (not timed), then `decode_steps` greedy one-token steps per call are timed interleaved,
ours and transformers', `repeats` times after a warm-up call; per-token time is a call's median
over the steps. Also what each cache holds after the prefill and the last logits' difference there
(both decode the same context, so a broken chunked prefill shows up as a difference)."""

import time

import torch

from .. import compat
from .harness import cuda_peak, interleave, log, median

# Tokens per prefill call. transformers re-expands the whole cache per call, ours reads it in latent
# space, so both grow per call with the context and shorter chunks only add calls.
PREFILL_CHUNK = 1024


def context_ids(s, context: int, device) -> torch.Tensor:
    """[1, context] fixed random tokens, the same in every process."""
    return torch.randint(3, s.vocab, (1, context), generator=torch.Generator().manual_seed(context)).to(device)


@torch.no_grad()
def prefill(model, ids: torch.Tensor) -> dict:
    """The DynamicCache after `ids` [1, T], fed PREFILL_CHUNK tokens per call (positions continue
    from the cache), the next greedy token and the last logits [1, V]."""
    model.eval()
    cache = None
    for start in range(0, ids.shape[1], PREFILL_CHUNK):
        kwargs = {} if cache is None else {compat.CACHE_ARG: cache}
        out = model(input_ids=ids[:, start : start + PREFILL_CHUNK], use_cache=True, logits_to_keep=1, **kwargs)
        cache = compat.output_cache(out)
    logits = out.logits[:, -1]
    return {"cache": cache, "token": logits.argmax(-1, keepdim=True), "logits": logits}


def decode_call(model, state: dict, steps: int):
    """A call of `steps` greedy one-token forwards continuing `state` (the cache grows by `steps`)."""

    @torch.no_grad()
    def call():
        for _ in range(steps):
            out = model(input_ids=state["token"], use_cache=True, **{compat.CACHE_ARG: state["cache"]})
            state["token"] = out.logits[:, -1:].argmax(-1)

    return call


def cache_bytes(cache) -> int:
    """Bytes of every tensor the cache holds: per layer the latent [B, 1, T, R] as keys and the
    rotated shared key [B, 1, T, dr] as values, in both models."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def decode_at(s, models: dict, context: int, device) -> dict:
    """{"decode_s": {model: seconds per call}, "cache_bytes", "peak_bytes" (CUDA only, else None),
    "prefill_logit_diff"} at `context`."""
    ids = context_ids(s, context, device)
    states = {}
    for name, m in models.items():
        start = time.perf_counter()
        states[name] = prefill(m, ids)
        log.info(f"[mla] prefill @{context:<18} {name:<18} {time.perf_counter() - start:10.1f} s")
    held = {name: cache_bytes(st["cache"]) for name, st in states.items()}
    ours, ref = (states[n]["logits"] for n in models)
    diff = (ours.float() - ref.float()).abs().max().item()
    fns = {name: decode_call(m, states[name], s.decode_steps) for name, m in models.items()}
    times = interleave("mla", f"decode @{context}", fns, s.repeats, device, lambda t: f"{t / s.decode_steps * 1e3:.2f} ms/token")
    peaks = dict.fromkeys(models)
    if device.type == "cuda" and not s.no_memory:
        peaks = {name: cuda_peak(fn, device) for name, fn in fns.items()}
    return {"decode_s": times, "cache_bytes": held, "peak_bytes": peaks, "prefill_logit_diff": diff}


def per_token(s, decode_s: dict) -> dict:
    """{model: median seconds per token} from seconds per call of `decode_steps` steps."""
    return {name: median(t) / s.decode_steps for name, t in decode_s.items()}

