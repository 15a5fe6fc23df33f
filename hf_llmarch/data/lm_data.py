"""Text loading and fixed-length causal-LM blocks."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .corpus import default_corpus

logger = logging.getLogger(__name__)

# One or more blank (possibly whitespace-only) lines; indentation after them is kept.
_DOC_BREAK = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")


def _read_directory(path: Path) -> str:
    files = sorted(p for p in path.glob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"directory {str(path)!r} contains no .txt files")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def _load_hf_dataset(name: str, max_chars: int | None) -> str:
    hint = (
        f"could not load {name!r}: it is not an existing local file or directory, "
        f"and loading it as a Hugging Face dataset failed"
    )
    advice = "Pass a local text file (or a directory of .txt files) instead."
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # offline, unknown name, missing `datasets`, ...
        raise ValueError(f"{hint} ({type(exc).__name__}: {exc}). {advice}") from exc
    if "text" not in ds.column_names:
        raise ValueError(f"{hint}: it has no 'text' column (columns: {ds.column_names}). {advice}")
    parts, total = [], 0
    # Stop early so a huge dataset is not joined just to be truncated.
    for text in ds["text"]:
        parts.append(text or "")
        total += len(parts[-1]) + 2
        if max_chars is not None and total >= max_chars:
            break
    return "\n\n".join(parts)


def load_text(dataset: str | None = None, max_chars: int | None = None) -> str:
    """Load training text from the demo corpus, a local file/directory or ``datasets``.

    ``None``/``"default"`` -> :func:`~hf_llmarch.data.corpus.default_corpus`; an existing
    file -> its contents; a directory -> its ``*.txt`` files (sorted, blank-line
    separated); anything else -> the ``text`` column of ``datasets.load_dataset(name,
    split="train")``. Raises ``ValueError`` if none of these works.
    """
    if dataset is None or dataset == "default":
        text = default_corpus() if max_chars is None else default_corpus(max_chars)
    elif Path(dataset).is_file():
        text = Path(dataset).read_text(encoding="utf-8", errors="replace")
    elif Path(dataset).is_dir():
        text = _read_directory(Path(dataset))
    else:
        text = _load_hf_dataset(dataset, max_chars)
    return text if max_chars is None else text[:max_chars]


class LMBlockDataset(Dataset):
    """Non-overlapping ``block_size`` windows over a flat token stream.

    Labels equal the inputs because Hugging Face causal LMs shift them internally.
    A trailing partial block is dropped.
    """

    def __init__(self, token_ids: Sequence[int] | torch.Tensor, block_size: int):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        n_blocks = ids.numel() // block_size
        self.block_size = block_size
        self.blocks = ids[: n_blocks * block_size].reshape(n_blocks, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        # Copies, so a collator editing labels in place cannot corrupt the data.
        input_ids = self.blocks[idx].clone()
        return {
            "input_ids": input_ids,
            "labels": input_ids.clone(),
            "attention_mask": torch.ones_like(input_ids),
        }


def _tokenize_documents(text: str, tokenizer) -> list[int]:
    docs = [d for d in _DOC_BREAK.split(text) if d.strip()]
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc_ids in encoded:
        ids.extend(doc_ids)
        if eos is not None:
            ids.append(eos)
    return ids


def _eval_block_indices(n_blocks: int, eval_fraction: float) -> list[int]:
    """Evenly spaced blocks, so eval covers the whole corpus, not just its tail."""
    if eval_fraction <= 0:
        return []
    n_eval = min(max(1, round(n_blocks * eval_fraction)), n_blocks - 1)
    return [(2 * i + 1) * n_blocks // (2 * n_eval) for i in range(n_eval)]


def make_lm_datasets(
    text: str,
    tokenizer,
    block_size: int = 128,
    eval_fraction: float = 0.05,
    max_tokens: int | None = None,
) -> tuple[LMBlockDataset, LMBlockDataset]:
    """Tokenize ``text`` and split it into train/eval :class:`LMBlockDataset` s.

    Documents (separated by blank lines) are joined with the tokenizer's eos token,
    cut into non-overlapping ``block_size`` blocks and split deterministically,
    about ``eval_fraction`` of the blocks (at least one) going to eval.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    ids = _tokenize_documents(text, tokenizer)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_blocks = len(ids) // block_size
    if n_blocks < 2:
        raise ValueError(
            f"text is too short: {len(ids)} tokens make {n_blocks} block(s) of "
            f"block_size={block_size}, need at least 2; use more text or a smaller block_size"
        )
    blocks = LMBlockDataset(ids, block_size).blocks
    is_eval = torch.zeros(n_blocks, dtype=torch.bool)
    is_eval[_eval_block_indices(n_blocks, eval_fraction)] = True
    train_ds = LMBlockDataset(blocks[~is_eval], block_size)
    eval_ds = LMBlockDataset(blocks[is_eval], block_size)
    logger.info(
        "LM data: %d tokens -> %d train / %d eval blocks of %d",
        len(ids), len(train_ds), len(eval_ds), block_size,
    )
    return train_ds, eval_ds
