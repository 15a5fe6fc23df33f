"""T5's relative position buckets and bias against transformers' T5Attention (prefill and a
cached step, encoder and decoder), the sinusoidal table against a hand computation (interleaved)
and Marian's table (halves), and the errors naming their config fields."""

import math

import pytest
import torch
from transformers import T5Config
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
from transformers.models.t5.modeling_t5 import T5Attention

from hf_llmarch.modules.positions import (
    LlmArchRelativePositionBias,
    relative_position_bucket,
    sinusoidal_embeddings,
    sinusoidal_positions,
)

# (num_buckets, max_distance) valid in both directions: >= 4 buckets, max_distance > num_buckets // 2.
BUCKET_SETTINGS = [(32, 128), (8, 20), (4, 3), (5, 3), (16, 9), (64, 1000)]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", BUCKET_SETTINGS)
def test_bucket_matches_t5(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-300, 301)
    ours = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)
    assert 0 <= ours.min() and ours.max() < num_buckets


def test_unidirectional_two_buckets_matches_t5():
    relative = torch.arange(-300, 301)
    ours = relative_position_bucket(relative, False, 2, 4)
    assert torch.equal(ours, T5Attention._relative_position_bucket(relative, False, 2, 4))


def t5_and_ours(is_decoder, num_buckets=8, max_distance=20, heads=3):
    config = T5Config(
        d_model=12, d_kv=4, num_heads=heads, is_decoder=is_decoder,
        relative_attention_num_buckets=num_buckets, relative_attention_max_distance=max_distance,
    )
    t5 = T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    ours = LlmArchRelativePositionBias(heads, num_buckets, max_distance, bidirectional=not is_decoder)
    with torch.no_grad():
        ours.relative_attention_bias.weight.copy_(t5.relative_attention_bias.weight)
    return t5, ours


@pytest.mark.parametrize("is_decoder", [False, True])
def test_bias_prefill_matches_t5(is_decoder):
    t5, ours = t5_and_ours(is_decoder)
    length = 30
    expected = t5.compute_bias(length, length)  # [1, H, T, T]
    got = ours(torch.arange(length), length)
    assert got.shape == (1, 3, length, length)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_bias_cached_step_matches_t5(is_decoder):
    t5, ours = t5_and_ours(is_decoder)
    past, new = 25, 3
    expected = t5.compute_bias(new, past + new, past_seen_tokens=past)  # [1, H, 3, 28]
    assert torch.equal(ours(torch.arange(past, past + new), past + new), expected)


def test_bias_batched_positions():
    _, ours = t5_and_ours(True)
    positions = torch.tensor([[0, 1], [5, 6]])
    got = ours(positions, 7)  # [2, H, 2, 7]
    assert got.shape == (2, 3, 2, 7)
    assert torch.equal(got[1:], ours(torch.tensor([5, 6]), 7))
    assert torch.equal(got[:1], ours(torch.tensor([0, 1]), 7))


def test_sinusoidal_interleaved_by_hand():
    # dim 4: angles pos / 10000^0 and pos / 10000^(2/4) = pos / 100.
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [0.8414709848078965, 0.5403023058681398, 0.009999833334166664, 0.9999500004166653],
        ]
    )
    assert math.isclose(math.sin(1 / 100), 0.009999833334166664)
    got = sinusoidal_positions(2, 4)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("num_positions,dim", [(2, 4), (16, 8), (64, 6), (512, 512), (1026, 64)])
def test_sinusoidal_halves_match_marian(num_positions, dim):
    # create_weight is what Marian's _init_weights copies into the (frozen) embedding.
    marian = MarianSinusoidalPositionalEmbedding(num_positions, dim).create_weight()
    assert torch.equal(sinusoidal_positions(num_positions, dim, interleaved=False), marian)


def test_sinusoidal_layouts_hold_the_same_values():
    interleaved = sinusoidal_positions(10, 8)
    halves = sinusoidal_positions(10, 8, interleaved=False)
    assert torch.equal(interleaved[:, 0::2], halves[:, :4])
    assert torch.equal(interleaved[:, 1::2], halves[:, 4:])


def test_errors_name_their_field():
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        LlmArchRelativePositionBias(2, 1, 10, bidirectional=False)
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        LlmArchRelativePositionBias(2, 3, 10, bidirectional=True)
    with pytest.raises(ValueError, match="relative_attention_max_distance must be >= 9"):
        LlmArchRelativePositionBias(2, 32, 8, bidirectional=True)
    with pytest.raises(ValueError, match="relative_attention_max_distance must be >= 17"):
        LlmArchRelativePositionBias(2, 32, 16, bidirectional=False)
    with pytest.raises(ValueError, match="relative_attention_max_distance must be >= 2"):
        LlmArchRelativePositionBias(2, 2, 0, bidirectional=False)
    with pytest.raises(ValueError, match="dim=5"):
        sinusoidal_positions(4, 5)


def test_sinusoidal_embeddings_are_table_rows():
    position_ids = torch.tensor([[0, 3, 7], [2, 2, 9]])
    for interleaved in (True, False):
        table = sinusoidal_positions(10, 6, interleaved)
        got = sinusoidal_embeddings(position_ids, 6, interleaved)  # [2, 3, 6]
        assert torch.equal(got, table[position_ids])
