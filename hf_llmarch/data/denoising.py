"""Denoising objectives for encoder-decoders: T5 span corruption and BART's noising functions.

T5 (``t5.data.preprocessors``): noise spans of the raw tokens are replaced in the inputs by one sentinel
each, and the targets list each sentinel followed by the span it hides. Sentinels come as an explicit
``sentinel_ids`` sequence, the k-th noise span getting ``sentinel_ids[k]``; for T5's tokenizer that is
``descending_sentinel_ids(len(tokenizer) - 1)`` (``<extra_id_0>`` is the last id, the others count down).

BART (fairseq's ``DenoisingDataset``): each noising function takes one document's body, a 1D LongTensor
WITHOUT BOS/EOS, and returns a new tensor; :class:`BartDenoisingCollator` adds BOS/EOS around the noised
body (the inputs) and around the original (the labels). Spans count tokens, not whole words as in fairseq.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .masking import (
    IGNORE_INDEX, as_id_tensor, attention_mask_for, check_fraction, check_generator, check_int, example_ids, pad_right,
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_mean_span(mean_noise_span_length) -> None:
    if not (_is_number(mean_noise_span_length) and mean_noise_span_length >= 1):
        raise ValueError(f"mean_noise_span_length={mean_noise_span_length!r} must be >= 1")


def _check_poisson_lambda(poisson_lambda) -> None:
    if not (_is_number(poisson_lambda) and poisson_lambda > 0):
        raise ValueError(f"poisson_lambda={poisson_lambda!r} must be > 0")


def _checked_ids(name: str, ids) -> tuple[int, ...]:
    """``ids`` (one id or a non-empty collection of ids) as a tuple."""
    ids = (ids,) if isinstance(ids, int) else tuple(ids)
    if not ids:
        raise ValueError(f"{name}={ids!r} must hold at least one id")
    for token_id in ids:
        check_int(name, token_id)
    return ids


def descending_sentinel_ids(first_sentinel_id: int, count: int = 100) -> tuple[int, ...]:
    """``(first, first - 1, ...)``: T5's ``<extra_id_0>, <extra_id_1>, ...`` count down."""
    check_int("count", count, minimum=1)
    check_int("first_sentinel_id", first_sentinel_id, minimum=count - 1)
    return tuple(range(first_sentinel_id, first_sentinel_id - count, -1))


def _noise_and_span_counts(length, noise_density, mean_noise_span_length) -> tuple[int, int]:
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    # T5 cannot split fewer non-noise tokens than spans into positive parts; clamp instead
    return num_noise, min(num_spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, generator) -> torch.Tensor:
    """Uniform split of ``num_items`` into ``num_segments`` positive lengths [num_segments]."""
    first_in_segment = torch.zeros(num_items, dtype=torch.long)
    boundaries = torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1
    first_in_segment[boundaries] = 1
    return torch.bincount(first_in_segment.cumsum(0), minlength=num_segments)


def random_spans_noise_mask(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0, generator=None
) -> torch.Tensor:
    """T5's ``random_spans_noise_mask``: bool [length], True on noise tokens.

    ``round(length * noise_density)`` noise tokens (clamped to [1, length - 1]) in
    ``round(noise / mean_noise_span_length)`` spans (at least 1), interleaved with as many non-noise
    spans, starting with a non-noise one. A length under 2 is computed as 2 and cropped, as T5 does.
    """
    check_int("length", length, minimum=1)
    check_fraction("noise_density", noise_density, "(0, 1)")
    _check_mean_span(mean_noise_span_length)
    padded_length = max(length, 2)
    num_noise, num_spans = _noise_and_span_counts(padded_length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    nonnoise_lengths = _random_segmentation(padded_length - num_noise, num_spans, generator)
    span_lengths = torch.stack([nonnoise_lengths, noise_lengths], dim=1).flatten()  # [2 * spans]
    is_noise_span = torch.tensor([False, True]).repeat(num_spans)
    return is_noise_span.repeat_interleave(span_lengths)[:length]


def _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length) -> tuple[int, int]:
    num_noise = round(tokens_length * noise_density)
    num_spans = round(num_noise / mean_noise_span_length)
    # one sentinel per span on each side, one EOS on each side
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: ``(tokens_length, targets_length)``.

    ``tokens_length`` is the longest raw length whose corrupted inputs (with EOS) fit in
    ``inputs_length``; ``targets_length`` is the length of its targets (with EOS).
    For 512, density 0.15 and mean span 3: ``(568, 114)``.
    """
    check_int("inputs_length", inputs_length, minimum=2)
    check_fraction("noise_density", noise_density, "(0, 1)")
    _check_mean_span(mean_noise_span_length)
    tokens_length = inputs_length - 1
    while _corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)
    # T5's hack: at density 0.5 make the targets no longer than the inputs
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def apply_span_corruption(ids, noise_mask, sentinel_ids, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``, 1D: the k-th noise span becomes ``sentinel_ids[k]`` in the inputs; the labels
    hold each sentinel followed by its span; EOS ends both."""
    ids = as_id_tensor(ids, "ids")
    noise_mask = torch.as_tensor(noise_mask, dtype=torch.bool)
    if noise_mask.shape != ids.shape:
        raise ValueError(f"noise_mask {tuple(noise_mask.shape)} must match ids {tuple(ids.shape)}")
    follows_noise = torch.cat([torch.tensor([False]), noise_mask[:-1]])
    span_starts = noise_mask & ~follows_noise  # [L]
    num_spans = int(span_starts.sum())
    if num_spans > len(sentinel_ids):
        raise ValueError(f"sentinel_ids has {len(sentinel_ids)} ids for {num_spans} noise spans")
    sentinels = torch.tensor(sentinel_ids[:num_spans], dtype=torch.long)
    eos = torch.tensor([eos_token_id])
    with_sentinels = ids.clone()
    with_sentinels[span_starts] = sentinels
    inputs = with_sentinels[~noise_mask | span_starts]
    starts_in_noise = span_starts[noise_mask]  # [num_noise]
    heads = torch.zeros_like(ids[noise_mask])
    heads[starts_in_noise] = sentinels
    pairs = torch.stack([heads, ids[noise_mask]], dim=1).flatten()  # [2 * num_noise]
    keep = torch.stack([starts_in_noise, torch.ones_like(starts_in_noise)], dim=1).flatten()
    return torch.cat([inputs, eos]), torch.cat([pairs[keep], eos])


@dataclass
class SpanCorruptionCollator:
    """T5 span corruption batches: ``input_ids, attention_mask, labels`` (labels padded -100).

    Each example's ``input_ids`` are raw tokens without EOS (size them with
    :func:`compute_span_corruption_lengths`). No ``decoder_input_ids``: the model shifts the labels.
    """

    sentinel_ids: tuple[int, ...]
    eos_token_id: int
    pad_token_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    generator: torch.Generator | None = None

    def __post_init__(self):
        self.sentinel_ids = _checked_ids("sentinel_ids", self.sentinel_ids)
        check_int("eos_token_id", self.eos_token_id)
        check_int("pad_token_id", self.pad_token_id)
        check_fraction("noise_density", self.noise_density, "(0, 1)")
        _check_mean_span(self.mean_noise_span_length)
        check_generator(self.generator)

    @classmethod
    def from_tokenizer(cls, tokenizer, num_sentinels: int = 100, **kwargs):
        """Sentinels ``<extra_id_0> ... <extra_id_{num_sentinels - 1}>`` looked up by name."""
        names = [f"<extra_id_{i}>" for i in range(num_sentinels)]
        sentinel_ids = tuple(tokenizer.convert_tokens_to_ids(names))
        unknown = tokenizer.unk_token_id
        if any(token_id in (None, unknown) for token_id in sentinel_ids):
            raise ValueError(f"num_sentinels={num_sentinels}: the tokenizer lacks some of {names}")
        ids = dict(sentinel_ids=sentinel_ids, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return cls(**{**ids, **kwargs})

    def _corrupt(self, ids):
        noise_mask = random_spans_noise_mask(len(ids), self.noise_density, self.mean_noise_span_length, self.generator)
        return apply_span_corruption(ids, noise_mask, self.sentinel_ids, self.eos_token_id)

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        inputs, labels = zip(*(self._corrupt(ids) for ids in example_ids(examples)))
        return {
            "input_ids": pad_right(inputs, self.pad_token_id),  # [B, T_in]
            "attention_mask": attention_mask_for(inputs),
            "labels": pad_right(labels, IGNORE_INDEX),  # [B, T_out]
        }


def token_masking(ids, mask_token_id: int, probability: float, generator=None) -> torch.Tensor:
    """Each token independently becomes ``mask_token_id`` with ``probability``."""
    ids = as_id_tensor(ids, "ids", min_length=0)
    check_int("mask_token_id", mask_token_id)
    check_fraction("probability", probability)
    chosen = torch.rand(len(ids), generator=generator) < probability
    return torch.where(chosen, mask_token_id, ids)


def token_deletion(ids, probability: float, generator=None) -> torch.Tensor:
    """Each token independently deleted with ``probability``."""
    ids = as_id_tensor(ids, "ids", min_length=0)
    check_fraction("probability", probability)
    return ids[torch.rand(len(ids), generator=generator) >= probability]


def sample_infilling_span_lengths(
    num_tokens: int, probability: float = 0.3, poisson_lambda: float = 3.0, generator=None
) -> torch.Tensor:
    """Poisson(``poisson_lambda``) span lengths [num_spans], drawn until they cover
    ``ceil(num_tokens * probability)`` tokens, the last one trimmed to cover exactly that; zero lengths
    are insertions (as fairseq)."""
    check_int("num_tokens", num_tokens)
    check_fraction("probability", probability)
    _check_poisson_lambda(poisson_lambda)
    # the tolerance keeps 10 * 0.3 (3.0000000000000004 in floats) at 3
    budget = math.ceil(num_tokens * probability - 1e-9)
    lengths = torch.zeros(0, dtype=torch.long)
    if budget == 0:
        return lengths
    while lengths.sum() < budget:
        rates = torch.full((budget,), float(poisson_lambda))
        lengths = torch.cat([lengths, torch.poisson(rates, generator=generator).long()])
    cumulative = lengths.cumsum(0)
    last = int((cumulative < budget).sum())  # the span that reaches the budget
    lengths = lengths[: last + 1].clone()
    lengths[last] -= int(cumulative[last]) - budget
    return lengths


def _replace_spans(ids, span_lengths, mask_token_id, generator) -> torch.Tensor:
    """Non-overlapping spans of ``span_lengths`` at uniform places, each -> one mask token."""
    num_spans = len(span_lengths)
    num_slots = len(ids) - int(span_lengths.sum()) + num_spans  # kept tokens + spans
    is_span = torch.zeros(num_slots, dtype=torch.bool)
    is_span[torch.randperm(num_slots, generator=generator)[:num_spans]] = True
    slot_lengths = torch.ones(num_slots, dtype=torch.long)
    slot_lengths[is_span] = span_lengths
    slot_starts = slot_lengths.cumsum(0) - slot_lengths  # first original token of each slot
    out = torch.full((num_slots,), mask_token_id, dtype=torch.long)
    out[~is_span] = ids[slot_starts[~is_span]]
    return out


def text_infilling(
    ids, mask_token_id: int, probability: float = 0.3, poisson_lambda: float = 3.0, generator=None
) -> torch.Tensor:
    """BART text infilling: spans from :func:`sample_infilling_span_lengths` (drawn first, from the same
    generator) placed at uniform non-overlapping places; each span, even an empty one, becomes ONE mask."""
    ids = as_id_tensor(ids, "ids", min_length=0)
    check_int("mask_token_id", mask_token_id)
    span_lengths = sample_infilling_span_lengths(len(ids), probability, poisson_lambda, generator)
    return _replace_spans(ids, span_lengths, mask_token_id, generator)


def sentence_permutation(ids, sentence_end_ids, generator=None) -> torch.Tensor:
    """Split after each sentence end (a run such as "..." ends one sentence) and shuffle the sentences;
    tokens after the last end form a final sentence."""
    ids = as_id_tensor(ids, "ids", min_length=0)
    is_end = torch.isin(ids, torch.tensor(_checked_ids("sentence_end_ids", sentence_end_ids)))
    next_is_end = torch.cat([is_end[1:], torch.tensor([False])])
    cuts = ((is_end & ~next_is_end).nonzero().squeeze(1) + 1).tolist()
    if not cuts or cuts[-1] != len(ids):
        cuts.append(len(ids))
    sentences = ids.split(torch.diff(torch.tensor([0] + cuts)).tolist())
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return torch.cat([sentences[i] for i in order])


def document_rotation(ids, generator=None) -> torch.Tensor:
    """Rotate so the document starts at a uniformly chosen token."""
    ids = as_id_tensor(ids, "ids", min_length=0)
    if len(ids) == 0:
        return ids.clone()
    start = int(torch.randint(len(ids), (1,), generator=generator))
    return ids.roll(-start)


@dataclass
class BartDenoisingCollator:
    """BART denoising batches: ``input_ids`` (noised, with BOS/EOS), ``attention_mask``, ``labels`` (the
    original with BOS/EOS, padded -100). Examples' ``input_ids`` are bodies without BOS/EOS.

    Noise order: sentence permutation, token masking, token deletion, text infilling, rotation; a
    probability of 0 or a False flag skips a step. The defaults are BART-large's recipe.
    """

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    mask_token_id: int
    sentence_end_ids: tuple[int, ...] = ()
    permute_sentences: bool = True
    token_mask_prob: float = 0.0
    token_delete_prob: float = 0.0
    infill_prob: float = 0.3
    poisson_lambda: float = 3.0
    rotate_document: bool = False
    generator: torch.Generator | None = None

    def __post_init__(self):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
            check_int(name, getattr(self, name))
        if self.permute_sentences:
            _checked_ids("sentence_end_ids", self.sentence_end_ids)
        for name in ("token_mask_prob", "token_delete_prob", "infill_prob"):
            check_fraction(name, getattr(self, name))
        _check_poisson_lambda(self.poisson_lambda)
        check_generator(self.generator)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs):
        """Ids from ``tokenizer``; sentence ends default to the id of the token ``"."``."""
        full_stop = tokenizer.convert_tokens_to_ids(".")
        if "sentence_end_ids" not in kwargs and full_stop in (None, tokenizer.unk_token_id):
            raise ValueError(f"sentence_end_ids: the tokenizer maps '.' to {full_stop!r}; pass the ids explicitly")
        ids = dict(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
            sentence_end_ids=(full_stop,),
        )
        return cls(**{**ids, **kwargs})

    def noise(self, body: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if self.permute_sentences:
            body = sentence_permutation(body, self.sentence_end_ids, g)
        if self.token_mask_prob > 0:
            body = token_masking(body, self.mask_token_id, self.token_mask_prob, g)
        if self.token_delete_prob > 0:
            body = token_deletion(body, self.token_delete_prob, g)
        if self.infill_prob > 0:
            body = text_infilling(body, self.mask_token_id, self.infill_prob, self.poisson_lambda, g)
        if self.rotate_document:
            body = document_rotation(body, g)
        return body

    def _wrap(self, body: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.tensor([self.bos_token_id]), body, torch.tensor([self.eos_token_id])])

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        bodies = example_ids(examples, min_length=0)
        inputs = [self._wrap(self.noise(body)) for body in bodies]
        return {
            "input_ids": pad_right(inputs, self.pad_token_id),  # [B, T_in]
            "attention_mask": attention_mask_for(inputs),
            "labels": pad_right([self._wrap(body) for body in bodies], IGNORE_INDEX),  # [B, T_out]
        }
