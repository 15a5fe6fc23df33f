"""Multi-query associative recall (MQAR), the Zoology synthetic recall benchmark.

Follows ``zoology/data/multiquery_ar.py`` (arXiv 2312.04927): an example is a context
``k1 v1 k2 v2 ...`` (repeated ``num_passes`` times) followed by a query region in which
every key re-appears once, at a gap drawn from a power law that favours short gaps.

Labels use the Hugging Face causal-LM convention: ``ForCausalLMLoss`` scores the
prediction made at position ``t`` against ``labels[t + 1]``. For a query key at
position ``i`` the model must emit the paired value there, so ``labels[i + 1]`` holds
that value and every other label is ``-100``. (Zoology's own labels sit at ``i``
itself, because its loss does not shift.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100

# Caps the noise matrix _gumbel_top_k ranks at once (16 MB), whatever the example count.
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class MQARConfig:
    """Parameters of one MQAR data segment (names follow Zoology's ``MQARConfig``)."""

    vocab_size: int = 8192
    input_seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    num_passes: int = 1
    random_non_queries: bool = True
    num_examples: int = 1000
    seed: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "input_seq_len", "num_kv_pairs", "num_passes", "num_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a}")
        if self.input_seq_len % 2:
            raise ValueError(f"input_seq_len must be even, got {self.input_seq_len}")
        if self.input_seq_len >= self.vocab_size:
            raise ValueError(
                f"input_seq_len={self.input_seq_len} must be < vocab_size={self.vocab_size}"
            )
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for num_kv_pairs={self.num_kv_pairs} "
                f"unique keys in [1, {self.vocab_size // 2}); "
                "need num_kv_pairs <= vocab_size // 2 - 1"
            )
        needed = self.context_len + 2 * self.num_kv_pairs
        if needed > self.input_seq_len:
            raise ValueError(
                f"num_kv_pairs={self.num_kv_pairs} with num_passes={self.num_passes} needs "
                f"num_kv_pairs*2*num_passes + num_kv_pairs*2 = {needed} <= "
                f"input_seq_len={self.input_seq_len}"
            )

    @property
    def context_len(self) -> int:
        return 2 * self.num_kv_pairs * self.num_passes


def _gumbel_top_k(n_rows, width, k, generator, log_weights=None):
    """Per row, ``k`` distinct indices in ``[0, width)``, drawn ∝ ``exp(log_weights)``.

    Gumbel top-k: the ``k`` largest of ``log_weights + Gumbel noise`` have exactly the
    distribution of sequential sampling without replacement, but vectorise over rows.
    Without weights the raw uniform noise ranks the same way, so the logs are skipped.
    """
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // width)
    chunks = []
    for start in range(0, n_rows, rows_per_chunk):
        scores = torch.rand(min(rows_per_chunk, n_rows - start), width, generator=generator)
        if log_weights is not None:
            scores = log_weights - torch.log(-torch.log(scores))
        chunks.append(scores.topk(k, dim=1).indices)  # [rows, k]
    return torch.cat(chunks)  # [n_rows, k]


def _has_duplicates(rows):
    ordered = rows.sort(dim=1).values  # [n, k]
    return (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)  # [n]


def _distinct_uniform(n_rows, width, k, generator):
    """Per row, ``k`` distinct uniform indices in ``[0, width)``, in random order.

    For ``k`` small against ``width`` (keys and values from a big vocabulary), redrawing
    rows with a repeat is much cheaper than ranking ``width`` noise values per row; an
    i.i.d. draw conditioned on having no repeat is exactly a uniform ordered subset.
    """
    if k * k > 2 * width:  # most rows would repeat a draw, so rank noise instead
        return _gumbel_top_k(n_rows, width, k, generator)
    out = torch.randint(width, (n_rows, k), generator=generator)  # [n_rows, k]
    redo = _has_duplicates(out).nonzero().squeeze(1)  # row indices
    while redo.numel():
        out[redo] = torch.randint(width, (redo.numel(), k), generator=generator)
        redo = redo[_has_duplicates(out[redo])]  # only redrawn rows can still repeat
    return out


def make_mqar(config: MQARConfig) -> dict[str, torch.Tensor]:
    """Generate ``config.num_examples`` MQAR examples.

    Returns ``{"input_ids": [N, L], "labels": [N, L]}`` (int64). Keys come from
    ``[1, V/2)`` and values from ``[V/2, V)``, unique within an example. Query ``j``
    sits at ``context_len + 2 * gap_j``, with the gaps drawn without replacement from
    ``p(g) ∝ a * g**(a - 1)`` over the ``(L - context_len) // 2`` query slots, and
    ``labels[query + 1]`` is the key's value (see the module docstring). Other slots
    are 0, or random tokens from ``[1, V)`` when ``random_non_queries`` (as in Zoology,
    such a filler token may happen to equal a key; it is never scored).
    """
    n, seq_len, k = config.num_examples, config.input_seq_len, config.num_kv_pairs
    half = config.vocab_size // 2
    generator = torch.Generator().manual_seed(config.seed)

    keys = 1 + _distinct_uniform(n, half - 1, k, generator)  # [N, k]
    values = half + _distinct_uniform(n, config.vocab_size - half, k, generator)

    context = torch.stack([keys, values], dim=2).reshape(n, 2 * k)  # k1 v1 k2 v2 ...
    context = context.repeat(1, config.num_passes)  # [N, context_len]

    # Gap g (0-based) has weight (g + 1)**(a - 1); the constant factor a cancels.
    space = (seq_len - config.context_len) // 2
    log_p = (config.power_a - 1) * torch.arange(1, space + 1, dtype=torch.float64).log()
    gaps = _gumbel_top_k(n, space, k, generator, log_p.float())  # [N, k]
    query_pos = config.context_len + 2 * gaps  # [N, k], at most seq_len - 2

    input_ids = torch.zeros(n, seq_len, dtype=torch.long)
    input_ids[:, : config.context_len] = context
    input_ids.scatter_(1, query_pos, keys)
    labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, query_pos + 1, values)

    if config.random_non_queries:
        filler = torch.randint(1, config.vocab_size, (n, seq_len), generator=generator)
        input_ids = torch.where(input_ids == 0, filler, input_ids)  # only non-query slots are 0
    return {"input_ids": input_ids, "labels": labels}


def mqar_accuracy(logits, labels) -> float:
    """Fraction of scored positions whose argmax is right, under the causal-LM shift.

    ``logits`` ``[N, L, V]`` and ``labels`` ``[N, L]`` (tensors or arrays, e.g. from a
    Trainer's ``EvalPrediction``); the prediction at ``t`` is checked against ``labels[t + 1]``.
    """
    predictions = torch.as_tensor(logits)[:, :-1].argmax(dim=-1)  # [N, L-1]
    targets = torch.as_tensor(labels)[:, 1:]  # [N, L-1]
    scored = targets != IGNORE_INDEX
    if not scored.any():
        raise ValueError("labels contain no scored positions (all are -100)")
    return (predictions[scored] == targets[scored]).float().mean().item()


class MQARDataset(Dataset):
    """MQAR examples as Trainer-ready dicts of ``input_ids``, ``labels``, ``attention_mask``."""

    def __init__(self, config: MQARConfig):
        self.config = config
        data = make_mqar(config)
        self.input_ids, self.labels = data["input_ids"], data["labels"]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        # Copies, so a collator editing labels in place cannot corrupt the data.
        input_ids = self.input_ids[idx].clone()
        return {
            "input_ids": input_ids,
            "labels": self.labels[idx].clone(),
            "attention_mask": torch.ones_like(input_ids),
        }


def mqar_datasets(
    train_config: MQARConfig, test_config: MQARConfig
) -> tuple[MQARDataset, MQARDataset]:
    """Train and test :class:`MQARDataset` s; their seeds must differ to avoid shared examples."""
    if train_config.seed == test_config.seed:
        raise ValueError(
            f"seed must differ between train and test configs (both {train_config.seed}), "
            "otherwise test examples can repeat training ones"
        )
    return MQARDataset(train_config), MQARDataset(test_config)
