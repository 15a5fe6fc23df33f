"""Encoder pre-training collators: MLM (BERT, RoBERTa), NSP (BERT), SOP (ALBERT), RTD (ELECTRA).

Every random draw takes an explicit ``torch.Generator``. A collator keeps its generator as a field; a
``DataLoader`` with ``num_workers > 0`` copies it into each worker, so every worker draws the same masks
unless a ``worker_init_fn`` reseeds each copy.

ELECTRA's generator trains on an MLM batch: its released code masks 15% of the tokens and puts ``[MASK]``
on 85% of those, leaving the rest unchanged, i.e. ``MLMCollator(..., mask_replace_prob=0.85,
random_replace_prob=0.0)`` (the paper describes all chosen tokens as ``[MASK]``: ``mask_replace_prob=1.0``).
The discriminator's targets come from :func:`replaced_token_detection_labels`.

This module also holds the padding and validation helpers the other collators share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100


def check_fraction(name: str, value, interval: str = "[0, 1]") -> None:
    """Raise ``ValueError`` unless ``value`` is in ``interval``: "[0, 1]", "(0, 1]" or "(0, 1)"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number in {interval}")
    above_low = value > 0 if interval[0] == "(" else value >= 0
    below_high = value < 1 if interval[-1] == ")" else value <= 1
    if not (above_low and below_high):
        raise ValueError(f"{name}={value!r} must be in {interval}")


def check_int(name: str, value, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r} must be a torch.Generator or None")


def as_id_tensor(ids, name: str = "input_ids", min_length: int = 1) -> torch.Tensor:
    """``ids`` (list of ints or 1D integer tensor) as a 1D LongTensor of at least ``min_length`` tokens."""
    tensor = torch.as_tensor(ids)
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name}={ids!r} must be a 1D sequence of ints")
    if tensor.numel() < min_length:
        raise ValueError(f"{name}={ids!r} has {tensor.numel()} tokens, needs at least {min_length}")
    return tensor.long()


def example_field(example, key: str):
    if not isinstance(example, dict) or key not in example:
        raise ValueError(f"example={example!r} must be a dict with a {key!r} entry")
    return example[key]


def example_ids(examples, key: str = "input_ids", min_length: int = 1) -> list[torch.Tensor]:
    """The ``key`` field of every example, as 1D LongTensors."""
    if not examples:
        raise ValueError(f"examples={examples!r} must hold at least one example")
    return [as_id_tensor(example_field(ex, key), key, min_length) for ex in examples]


def pad_right(rows: Sequence[torch.Tensor], pad_value) -> torch.Tensor:
    return pad_sequence(list(rows), batch_first=True, padding_value=pad_value)  # [B, T]


def attention_mask_for(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    return pad_right([torch.ones(len(r), dtype=torch.long) for r in rows], 0)  # [B, T]


def check_mlm_probabilities(mlm_probability, mask_replace_prob, random_replace_prob) -> None:
    check_fraction("mlm_probability", mlm_probability, "(0, 1]")
    check_fraction("mask_replace_prob", mask_replace_prob)
    check_fraction("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1:
        total = f"mask_replace_prob={mask_replace_prob} + random_replace_prob={random_replace_prob}"
        raise ValueError(f"{total} must be <= 1")


def mask_tokens(
    input_ids: torch.Tensor, special_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
    mlm_probability: float = 0.15, mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``input_ids`` [B, T]; returns ``(inputs, labels)``, both [B, T].

    Each position outside ``special_mask`` (specials and padding) is chosen with probability
    ``mlm_probability``; a chosen token becomes ``mask_token_id`` with probability ``mask_replace_prob``,
    a uniform id in ``[0, vocab_size)`` (special ids included) with probability ``random_replace_prob``,
    and stays unchanged otherwise. ``labels`` holds the original id at chosen positions and -100
    elsewhere. A row may get no chosen position at all.

    Draws, in order: ``rand [B, T]`` (choice), ``rand [B, T]`` (action), ``randint [B, T]``.
    """
    check_mlm_probabilities(mlm_probability, mask_replace_prob, random_replace_prob)
    check_int("mask_token_id", mask_token_id)
    check_int("vocab_size", vocab_size, minimum=1)
    if input_ids.ndim != 2 or input_ids.shape != special_mask.shape:
        shapes = f"input_ids {tuple(input_ids.shape)}, special_mask {tuple(special_mask.shape)}"
        raise ValueError(f"{shapes} must both be [batch, seq]")
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < mlm_probability) & ~special_mask.bool()
    action = torch.rand(shape, generator=generator)
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    to_mask = chosen & (action < mask_replace_prob)
    to_random = chosen & ~to_mask & (action < mask_replace_prob + random_replace_prob)
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, torch.where(chosen, input_ids, IGNORE_INDEX)


@dataclass
class MLMCollator:
    """Dynamic masked-LM batches (new masks every call): ``input_ids, attention_mask, labels``.

    Tokens whose id is in ``special_token_ids``, and padding, are never chosen.
    """

    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    special_token_ids: tuple[int, ...] = ()
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    generator: torch.Generator | None = None

    def __post_init__(self):
        for name in ("mask_token_id", "pad_token_id"):
            check_int(name, getattr(self, name))
        check_int("vocab_size", self.vocab_size, minimum=1)
        self.special_token_ids = tuple(self.special_token_ids)
        for token_id in self.special_token_ids:
            check_int("special_token_ids", token_id)
        check_mlm_probabilities(self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)
        check_generator(self.generator)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> MLMCollator:
        ids = dict(
            mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
            vocab_size=len(tokenizer), special_token_ids=tuple(tokenizer.all_special_ids),
        )
        return cls(**{**ids, **kwargs})

    def mask_batch(self, input_ids, special_mask):
        """:func:`mask_tokens` with this collator's settings and generator."""
        probabilities = (self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)
        return mask_tokens(input_ids, special_mask, self.mask_token_id, self.vocab_size, *probabilities, self.generator)

    def special_positions(self, input_ids, attention_mask):
        special = torch.isin(input_ids, torch.tensor(self.special_token_ids, dtype=torch.long))
        return special | (attention_mask == 0)  # [B, T]

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        rows = example_ids(examples)
        input_ids = pad_right(rows, self.pad_token_id)  # [B, T]
        attention_mask = attention_mask_for(rows)
        inputs, labels = self.mask_batch(input_ids, self.special_positions(input_ids, attention_mask))
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}


def _sentence_pairs(documents) -> list[tuple[int, int]]:
    """(document, sentence) index of every sentence that has a successor in its document."""
    if not documents:
        raise ValueError(f"documents={documents!r} must hold at least one document")
    for index, document in enumerate(documents):
        if not document:
            raise ValueError(f"documents[{index}]={document!r} must hold at least one sentence")
    return [(d, s) for d, document in enumerate(documents) for s in range(len(document) - 1)]


def _sentence_from_other_document(documents, document_index, generator):
    other = int(torch.randint(len(documents) - 1, (1,), generator=generator))
    other += other >= document_index  # skip the source document
    sentence = int(torch.randint(len(documents[other]), (1,), generator=generator))
    return documents[other][sentence]


def _pair_example(segment_a, segment_b, label_key: str, label: bool) -> dict:
    return {"segment_a": list(segment_a), "segment_b": list(segment_b), label_key: int(label)}


def make_nsp_pairs(documents, generator: torch.Generator | None = None, random_prob: float = 0.5) -> list[dict]:
    """NSP examples from ``documents`` (a document is a list of sentences, each a list of ids).

    Each sentence with a successor is ``segment_a``; with probability ``random_prob`` ``segment_b`` is a
    uniform sentence of another document (``next_sentence_label=1``), otherwise the next sentence (0).
    """
    check_fraction("random_prob", random_prob)
    pairs = _sentence_pairs(documents)
    if random_prob > 0 and len(documents) < 2:
        raise ValueError(f"documents has {len(documents)} document; random_prob={random_prob} needs >= 2")
    examples = []
    for d, s in pairs:
        is_random = bool(torch.rand(1, generator=generator) < random_prob)
        b = _sentence_from_other_document(documents, d, generator) if is_random else documents[d][s + 1]
        examples.append(_pair_example(documents[d][s], b, "next_sentence_label", is_random))
    return examples


def make_sop_pairs(documents, generator: torch.Generator | None = None, swap_prob: float = 0.5) -> list[dict]:
    """SOP examples: consecutive sentences, swapped with probability ``swap_prob`` (label 1)."""
    check_fraction("swap_prob", swap_prob)
    examples = []
    for d, s in _sentence_pairs(documents):
        first, second = documents[d][s], documents[d][s + 1]
        swapped = bool(torch.rand(1, generator=generator) < swap_prob)
        pair = (second, first) if swapped else (first, second)
        examples.append(_pair_example(*pair, "sentence_order_label", swapped))
    return examples


def truncate_pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Segment lengths after BERT's trimming: one token at a time from the longer one (``b`` on ties)."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


@dataclass
class _SentencePairCollator:
    """``[CLS] a [SEP] b [SEP]`` batches with ``token_type_ids`` and a pair label.

    Pairs longer than ``max_length`` lose tokens from the end of the longer segment first. With ``mlm``
    set, the batch is also MLM-masked (CLS/SEP never chosen) and gets ``labels``; without, no ``labels``.
    """

    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    mlm: MLMCollator | None = None
    max_length: int = 512
    label_key: ClassVar[str]

    def __post_init__(self):
        for name in ("cls_token_id", "sep_token_id", "pad_token_id"):
            check_int(name, getattr(self, name))
        check_int("max_length", self.max_length, minimum=5)  # CLS, SEP, SEP, one token per segment
        if self.mlm is not None and not isinstance(self.mlm, MLMCollator):
            raise ValueError(f"mlm={self.mlm!r} must be an MLMCollator or None")

    @classmethod
    def from_tokenizer(cls, tokenizer, max_length: int = 512, **mlm_kwargs):
        """Ids from ``tokenizer``; ``mlm_kwargs`` go to :meth:`MLMCollator.from_tokenizer`."""
        mlm = MLMCollator.from_tokenizer(tokenizer, **mlm_kwargs)
        ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        return cls(*ids, mlm=mlm, max_length=max_length)

    def _layout(self, example):
        """``(input_ids, token_type_ids, special_mask)`` of one pair, each [L]."""
        a = as_id_tensor(example_field(example, "segment_a"), "segment_a")
        b = as_id_tensor(example_field(example, "segment_b"), "segment_b")
        len_a, len_b = truncate_pair_lengths(len(a), len(b), self.max_length - 3)
        cls, sep = torch.tensor([self.cls_token_id]), torch.tensor([self.sep_token_id])
        input_ids = torch.cat([cls, a[:len_a], sep, b[:len_b], sep])
        token_type_ids = torch.cat([torch.zeros(len_a + 2), torch.ones(len_b + 1)]).long()
        special = torch.zeros(len(input_ids), dtype=torch.bool)
        special[[0, len_a + 1, -1]] = True
        return input_ids, token_type_ids, special

    def _label(self, example) -> int:
        label = example_field(example, self.label_key)
        if label not in (0, 1):
            raise ValueError(f"{self.label_key}={label!r} must be 0 or 1")
        return int(label)

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError(f"examples={examples!r} must hold at least one example")
        ids, types, specials = zip(*(self._layout(ex) for ex in examples))
        batch = {
            "input_ids": pad_right(ids, self.pad_token_id),  # [B, T]
            "attention_mask": attention_mask_for(ids),
            "token_type_ids": pad_right(types, 0),
            self.label_key: torch.tensor([self._label(ex) for ex in examples]),  # [B]
        }
        if self.mlm is not None:
            input_ids = batch["input_ids"]
            special = pad_right(specials, True) | self.mlm.special_positions(input_ids, batch["attention_mask"])
            batch["input_ids"], batch["labels"] = self.mlm.mask_batch(input_ids, special)
        return batch


class NSPCollator(_SentencePairCollator):
    """BERT next sentence prediction: ``next_sentence_label`` 0 = b follows a, 1 = random b."""

    label_key = "next_sentence_label"


class SOPCollator(_SentencePairCollator):
    """ALBERT sentence order prediction: ``sentence_order_label`` 0 = in order, 1 = swapped."""

    label_key = "sentence_order_label"


def replaced_token_detection_labels(original_ids, corrupted_ids, attention_mask) -> torch.Tensor:
    """ELECTRA discriminator targets [B, T]: 1 replaced, 0 original, -100 on padding.

    A sampled token equal to the original counts as original (label 0), as in ELECTRA.
    """
    shapes = [tuple(t.shape) for t in (original_ids, corrupted_ids, attention_mask)]
    if len(set(shapes)) > 1:
        raise ValueError(f"original_ids, corrupted_ids, attention_mask shapes {shapes} must match")
    labels = (corrupted_ids != original_ids).long()
    return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
