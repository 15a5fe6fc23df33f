from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers.loss.loss_utils import ForCausalLMLoss

from hf_llmarch.data import MQARConfig, MQARDataset, make_mqar, mqar_accuracy, mqar_datasets
from hf_llmarch.data.mqar import _distinct_uniform, _gumbel_top_k

SMALL = dict(vocab_size=64, input_seq_len=32, num_kv_pairs=4, num_examples=64)


def _query_positions(labels):
    """(row, position) of every query key: HF labels put its value one step later."""
    rows, pos = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    return rows, pos


def _context_pairs(input_ids, config):
    """Per row, the key -> value mapping of the first pass of the context."""
    ctx = input_ids[:, : 2 * config.num_kv_pairs]
    return [dict(zip(r[0::2].tolist(), r[1::2].tolist())) for r in ctx]


def _perfect_logits(data, config):
    """Logits that, at each query key, put all mass on the value paired in the context."""
    input_ids = data["input_ids"]
    logits = torch.zeros(*input_ids.shape, config.vocab_size)
    pairs = _context_pairs(input_ids, config)
    rows, pos = _query_positions(data["labels"])
    for r, i in zip(rows.tolist(), pos.tolist()):
        logits[r, i, pairs[r][input_ids[r, i].item()]] = 100.0
    return logits


def test_shapes_and_dtypes():
    config = MQARConfig(**SMALL)
    data = make_mqar(config)
    assert set(data) == {"input_ids", "labels"}
    for tensor in data.values():
        assert tensor.shape == (64, 32) and tensor.dtype == torch.long
    assert ((data["labels"] != -100).sum(dim=1) == 4).all()
    assert (data["labels"][:, : config.context_len + 1] == -100).all()


def test_deterministic_per_seed():
    first, again = make_mqar(MQARConfig(**SMALL)), make_mqar(MQARConfig(**SMALL))
    other = make_mqar(MQARConfig(**SMALL, seed=1))
    for name in ("input_ids", "labels"):
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])


@pytest.mark.parametrize("num_passes", [1, 2])
def test_keys_and_values_in_range_and_unique(num_passes):
    config = MQARConfig(vocab_size=256, input_seq_len=64, num_kv_pairs=8, num_passes=num_passes)
    ids = make_mqar(config)["input_ids"]
    keys, values = ids[:, 0:16:2], ids[:, 1:16:2]
    assert ((keys >= 1) & (keys < 128)).all()
    assert ((values >= 128) & (values < 256)).all()
    for row in range(ids.shape[0]):
        assert len(set(keys[row].tolist())) == len(set(values[row].tolist())) == 8
    # JRT passes repeat the same context verbatim.
    assert torch.equal(ids[:, : config.context_len], ids[:, :16].repeat(1, num_passes))


@pytest.mark.parametrize("random_non_queries", [False, True])
@pytest.mark.parametrize("num_passes", [1, 2])
def test_every_query_recalls_its_context_value(random_non_queries, num_passes):
    config = MQARConfig(**SMALL, num_passes=num_passes, random_non_queries=random_non_queries)
    data = make_mqar(config)
    ids, labels = data["input_ids"], data["labels"]
    pairs = _context_pairs(ids, config)
    rows, pos = _query_positions(labels)
    queried = Counter()
    for r, i in zip(rows.tolist(), pos.tolist()):
        assert i >= config.context_len and (i - config.context_len) % 2 == 0
        key = ids[r, i].item()
        assert labels[r, i + 1].item() == pairs[r][key]
        queried[r, key] += 1
    # Each key of each example is queried exactly once.
    assert sorted(queried) == sorted((r, key) for r in range(len(pairs)) for key in pairs[r])
    assert set(queried.values()) == {1}
    if random_non_queries:
        assert ((ids >= 1) & (ids < config.vocab_size)).all()
    else:
        is_query = torch.zeros_like(ids, dtype=torch.bool)
        is_query[rows, pos] = True
        tail = ids[:, config.context_len :]
        assert torch.equal(tail != 0, is_query[:, config.context_len :])


def test_label_alignment_under_transformers_shift():
    config = MQARConfig(**SMALL)
    data = make_mqar(config)
    labels = data["labels"]
    logits = _perfect_logits(data, config)
    assert mqar_accuracy(logits, labels) == 1.0
    assert mqar_accuracy(logits.numpy(), labels.numpy()) == 1.0  # Trainer hands over arrays
    loss = ForCausalLMLoss(logits, labels, vocab_size=config.vocab_size)
    assert loss.item() < 1e-6
    # Answering one step late (at the slot after the query) must score nothing.
    late = torch.roll(logits, shifts=1, dims=1)
    assert mqar_accuracy(late, labels) == 0.0
    assert ForCausalLMLoss(late, labels, vocab_size=config.vocab_size).item() > 1.0


def test_accuracy_counts_only_scored_positions():
    labels = torch.full((1, 4), -100)
    labels[0, 2], labels[0, 3] = 5, 6
    logits = torch.zeros(1, 4, 8)
    logits[0, 1, 5] = 1.0  # right: predicts labels[2]
    logits[0, 2, 7] = 1.0  # wrong: labels[3] is 6
    logits[0, 3, 0] = 1.0  # last position has no target
    assert mqar_accuracy(logits, labels) == 0.5
    with pytest.raises(ValueError, match="no scored positions"):
        mqar_accuracy(logits, torch.full((1, 4), -100))


def test_gap_distribution_favours_small_gaps_for_small_power_a():
    def gaps(power_a):
        config = MQARConfig(
            vocab_size=1024, input_seq_len=256, num_kv_pairs=4, power_a=power_a,
            num_examples=2000, seed=3,
        )
        _, pos = _query_positions(make_mqar(config)["labels"])
        return ((pos - config.context_len) // 2).float()

    space = (256 - 8) // 2
    skewed, uniform = gaps(0.01), gaps(1.0)
    assert uniform.mean() == pytest.approx((space - 1) / 2, rel=0.1)
    assert skewed.mean() < 0.6 * uniform.mean()
    assert (skewed == 0).float().mean() > 0.1 > 0.03 > (uniform == 0).float().mean()


def test_gumbel_top_k_matches_sequential_sampling():
    p = torch.tensor([0.6, 0.3, 0.1])
    draws = _gumbel_top_k(50_000, 3, 2, torch.Generator().manual_seed(0), p.log())
    counts = Counter(map(tuple, draws.tolist()))
    for (i, j), count in counts.items():
        expected = p[i] * p[j] / (1 - p[i])  # first i, then j among the rest
        assert count / 50_000 == pytest.approx(expected.item(), abs=0.01)
    assert len(counts) == 6


@pytest.mark.parametrize("width,k", [(5, 2), (3, 3)], ids=["redraw", "rank-noise"])
def test_distinct_uniform_is_uniform_over_ordered_subsets(width, k):
    draws = _distinct_uniform(30_000, width, k, torch.Generator().manual_seed(0))
    counts = Counter(map(tuple, draws.tolist()))
    n_subsets = int(np.prod(range(width - k + 1, width + 1)))
    assert len(counts) == n_subsets
    assert all(len(set(t)) == k for t in counts)
    assert max(abs(c / 30_000 - 1 / n_subsets) for c in counts.values()) < 0.01


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=True), "vocab_size"),
        (dict(num_examples=0), "num_examples"),
        (dict(num_kv_pairs=2.5), "num_kv_pairs"),
        (dict(num_passes=0), "num_passes"),
        (dict(seed=-1), "seed"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=1.5), "power_a"),
        (dict(input_seq_len=63), "input_seq_len"),
        (dict(vocab_size=64, input_seq_len=64), "input_seq_len"),
        (dict(vocab_size=8, input_seq_len=6, num_kv_pairs=4), "vocab_size"),
        (dict(input_seq_len=16, num_passes=2), r"num_kv_pairs=4 .* = 24 <= input_seq_len=16"),
    ],
)
def test_config_errors_name_their_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MQARConfig(**overrides)


def test_datasets_are_trainer_ready():
    test_config = MQARConfig(**{**SMALL, "num_examples": 8}, seed=1)
    train, test = mqar_datasets(MQARConfig(**SMALL), test_config)
    assert isinstance(train, MQARDataset) and (len(train), len(test)) == (64, 8)
    item = train[0]
    assert set(item) == {"input_ids", "labels", "attention_mask"}
    assert torch.equal(item["attention_mask"], torch.ones(32, dtype=torch.long))
    item["labels"][:] = 0  # a collator editing labels in place must not alter the data
    assert (train[0]["labels"] == -100).any()
    batch = next(iter(DataLoader(train, batch_size=16)))
    assert batch["input_ids"].shape == batch["labels"].shape == (16, 32)
    with pytest.raises(ValueError, match="seed"):
        mqar_datasets(MQARConfig(**SMALL), MQARConfig(**SMALL))
