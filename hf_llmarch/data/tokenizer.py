"""Tokenizers built locally with the ``tokenizers`` library (no downloads)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BYTE_VOCAB_SIZE = 258


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by the ByteLevel alphabet."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(shifted)
            shifted += 1
    return mapping


def _add_byte_level(tok: Tokenizer) -> None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()


def _wrap(tok: Tokenizer, padding_side: str) -> PreTrainedTokenizerFast:
    # One token serves as bos and eos (GPT-2 style); pad gets its own id so
    # that padding can never be confused with a real document boundary.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side=padding_side,
    )


def byte_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A 258-token byte-level tokenizer: ids 0-255 are the raw bytes.

    ``<|endoftext|>`` (id 256) is bos/eos and ``<|pad|>`` (id 257) is pad.
    Every UTF-8 string round-trips exactly, with no unknown tokens.
    """
    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    # An empty merge list makes BPE a pure byte -> id lookup.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    _add_byte_level(tok)
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    return _wrap(tok, padding_side)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, padding_side: str = "left"
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` with the same special tokens.

    The full byte alphabet is always included, so any text stays encodable.
    """
    if vocab_size < BYTE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {BYTE_VOCAB_SIZE} (256 bytes + 2 special "
            f"tokens), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    _add_byte_level(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, padding_side)
