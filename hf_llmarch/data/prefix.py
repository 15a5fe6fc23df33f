"""Prefix-LM objectives: a bidirectional prefix then a causal suffix (GLM/UniLM), or the same
split fed to an encoder-decoder (RedLLM: the first half to the encoder, the rest as targets).

Labels follow transformers' causal-LM convention: the model shifts them, so ``labels[t]`` is
token ``t``, predicted from position ``t - 1``. The first suffix token keeps its label: the last
prefix token predicts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masking import (
    IGNORE_INDEX,
    as_id_tensor,
    attention_mask_for,
    check_fraction,
    check_generator,
    check_int,
    example_ids,
    pad_right,
)


def fixed_prefix_length(length: int, prefix_fraction: float) -> int:
    """``floor(length * prefix_fraction)``, clamped so prefix and suffix both keep a token."""
    # the tolerance keeps 100 * 0.29 (28.999999999999996 in floats) at 29
    return min(max(int(length * prefix_fraction + 1e-9), 1), length - 1)


def split_for_encoder_decoder(ids, prefix_fraction: float = 0.5):
    """``(encoder_ids, decoder_labels)``: the first ``fixed_prefix_length`` tokens, the rest."""
    ids = as_id_tensor(ids, "ids", min_length=2)
    check_fraction("prefix_fraction", prefix_fraction, "(0, 1)")
    prefix_length = fixed_prefix_length(len(ids), prefix_fraction)
    return ids[:prefix_length], ids[prefix_length:]


@dataclass
class PrefixLMCollator:
    """Decoder-only prefix-LM batches: ``input_ids, attention_mask, prefix_mask, labels``.

    ``prefix_mask`` [B, T] bool is True on the prefix (the model lets those tokens see each
    other both ways); ``labels`` are -100 on the prefix and on padding. The prefix length is
    :func:`fixed_prefix_length` when ``prefix_fraction`` is set, else uniform in
    ``[min_prefix, L - 1]`` for an example of ``L >= 2`` tokens (a ValueError when
    ``min_prefix`` leaves no suffix).
    """

    pad_token_id: int
    prefix_fraction: float | None = None
    min_prefix: int = 1
    generator: torch.Generator | None = None

    def __post_init__(self):
        check_int("pad_token_id", self.pad_token_id)
        if self.prefix_fraction is not None:
            check_fraction("prefix_fraction", self.prefix_fraction, "(0, 1)")
        check_int("min_prefix", self.min_prefix, minimum=1)
        check_generator(self.generator)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> PrefixLMCollator:
        return cls(**{"pad_token_id": tokenizer.pad_token_id, **kwargs})

    def prefix_length(self, length: int) -> int:
        if self.prefix_fraction is not None:
            return fixed_prefix_length(length, self.prefix_fraction)
        if self.min_prefix > length - 1:
            raise ValueError(
                f"min_prefix={self.min_prefix} leaves no suffix in an example of {length} tokens: the prefix must be "
                f"shorter than the sequence (at most {length - 1} here)"
            )
        return int(torch.randint(self.min_prefix, length, (1,), generator=self.generator))

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        rows = example_ids(examples, min_length=2)
        prefix_lengths = torch.tensor([self.prefix_length(len(row)) for row in rows])  # [B]
        input_ids = pad_right(rows, self.pad_token_id)  # [B, T]
        attention_mask = attention_mask_for(rows)
        positions = torch.arange(input_ids.shape[1])
        prefix_mask = positions < prefix_lengths[:, None]  # [B, T]
        no_loss = prefix_mask | (attention_mask == 0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prefix_mask": prefix_mask,
            "labels": input_ids.masked_fill(no_loss, IGNORE_INDEX),
        }


@dataclass
class PrefixToSeq2SeqCollator:
    """Encoder-decoder batches from plain text: ``input_ids, attention_mask`` hold the first
    ``prefix_fraction`` of each example, ``labels`` the rest (then ``eos_token_id`` if set),
    padded with -100."""

    pad_token_id: int
    prefix_fraction: float = 0.5
    eos_token_id: int | None = None

    def __post_init__(self):
        check_int("pad_token_id", self.pad_token_id)
        check_fraction("prefix_fraction", self.prefix_fraction, "(0, 1)")
        if self.eos_token_id is not None:
            check_int("eos_token_id", self.eos_token_id)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> PrefixToSeq2SeqCollator:
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        return cls(**{**ids, **kwargs})

    def _split(self, ids):
        encoder_ids, labels = split_for_encoder_decoder(ids, self.prefix_fraction)
        if self.eos_token_id is not None:
            labels = torch.cat([labels, torch.tensor([self.eos_token_id])])
        return encoder_ids, labels

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        rows = example_ids(examples, min_length=2)
        encoder_ids, labels = zip(*(self._split(row) for row in rows))
        return {
            "input_ids": pad_right(encoder_ids, self.pad_token_id),  # [B, T_enc]
            "attention_mask": attention_mask_for(encoder_ids),
            "labels": pad_right(labels, IGNORE_INDEX),  # [B, T_dec]
        }
