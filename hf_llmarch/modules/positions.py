"""Position encodings that are not rotary: T5's learned relative attention bias (bucketed
relative distances, one learned scalar per bucket and head, added to the attention scores) and
the fixed sinusoidal table of the original Transformer (interleaved, as in the paper) or of
fairseq / Marian (sin half then cos half), so checkpoints of either family load unchanged."""

import math

import torch
from torch import nn


def _max_exact(num_buckets: int, bidirectional: bool) -> int:
    """Distances below this get a bucket each; T5 spends half the buckets (of each direction,
    when bidirectional) on them and the other half on log-spaced bins."""
    return (num_buckets // 2 if bidirectional else num_buckets) // 2


def relative_position_bucket(
    relative_position: torch.LongTensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.LongTensor:
    """T5's bucket in [0, num_buckets) for each relative position (key index - query index).
    Bidirectional: the upper half of the buckets is for keys after the query. Otherwise keys
    after the query all fall in bucket 0 (a causal mask hides them anyway)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # Clamped below so the log never sees 0; those entries take the exact branch anyway. The
    # float32 op order is T5's, so bins land on the same side of every boundary.
    scaled = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    log_bucket = (max_exact + (scaled * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, log_bucket)


class LlmArchRelativePositionBias(nn.Module):
    """T5's learned relative attention bias: [1 or B, H, Tq, Tk] to add to the attention scores."""

    def __init__(self, num_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        # Bidirectional bucketing halves twice; below 4 buckets it has no exact bucket and T5 divides by zero.
        min_buckets = 4 if bidirectional else 2
        if num_buckets < min_buckets:
            raise ValueError(
                f"relative_attention_num_buckets must be >= {min_buckets} "
                f"({'bidirectional' if bidirectional else 'unidirectional'}), got {num_buckets}"
            )
        min_distance = max(1, _max_exact(num_buckets, bidirectional) + 1)
        if max_distance < min_distance:
            # At max_distance <= max_exact the log-bin scale log(max_distance / max_exact) is <= 0.
            raise ValueError(
                f"relative_attention_max_distance must be >= {min_distance} for "
                f"relative_attention_num_buckets={num_buckets}, got {max_distance}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def forward(self, query_positions: torch.LongTensor, key_length: int) -> torch.Tensor:
        """query_positions: absolute positions [Tq] or [B, Tq] (past + t while decoding with a
        cache); keys are positions 0..key_length-1."""
        if query_positions.dim() == 1:
            query_positions = query_positions.unsqueeze(0)  # [1, Tq]
        key_positions = torch.arange(key_length, dtype=torch.long, device=query_positions.device)  # [Tk]
        relative_position = key_positions[None, None, :] - query_positions[:, :, None]  # [1|B, Tq, Tk]
        buckets = relative_position_bucket(relative_position, self.bidirectional, self.num_buckets, self.max_distance)
        values = self.relative_attention_bias(buckets)  # [1|B, Tq, Tk, H]
        return values.permute(0, 3, 1, 2)  # [1|B, H, Tq, Tk]


def _sinusoid(positions: torch.Tensor, dim: int, interleaved: bool) -> torch.FloatTensor:
    """Sinusoids [..., dim] of float64 positions [...] with angle pos / 10000^(2i/dim), i < dim/2."""
    if dim % 2:
        raise ValueError(f"sinusoidal position dim must be even, got dim={dim}")
    # Python's float power is libm pow, as numpy's in Marian's table: same float64 denominators,
    # and float64 throughout keeps the float32 result identical across machines.
    denominators = torch.tensor(
        [10000.0 ** (2 * i / dim) for i in range(dim // 2)], dtype=torch.float64, device=positions.device
    )  # [dim/2]
    angles = positions[..., None] / denominators  # [..., dim/2]
    if interleaved:
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # [..., dim]
    else:
        table = torch.cat((angles.sin(), angles.cos()), dim=-1)  # [..., dim]
    return table.float()


def sinusoidal_positions(num_positions: int, dim: int, interleaved: bool = True) -> torch.FloatTensor:
    """Fixed sinusoidal table [num_positions, dim]. interleaved: columns sin, cos, sin, cos, ...
    (the paper); else [sin of all i | cos of all i] (fairseq, Marian)."""
    return _sinusoid(torch.arange(num_positions, dtype=torch.float64), dim, interleaved)


def sinusoidal_embeddings(position_ids: torch.LongTensor, dim: int, interleaved: bool = True) -> torch.FloatTensor:
    """The rows of sinusoidal_positions at position_ids [...] -> [..., dim], computed on the fly
    so no table caps the sequence length."""
    return _sinusoid(position_ids.to(torch.float64), dim, interleaved)
