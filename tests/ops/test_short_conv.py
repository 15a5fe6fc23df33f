"""The short causal depthwise conv: the torch path equals the per-token oracle with a carried
history and packed resets, and the history kept for the next chunk ends at each row's last real token."""

import pytest
import torch

from hf_llmarch.ops.short_conv import conv_state_after, resolve_short_conv_mode, short_conv, short_conv_naive

B, T, C, K = 2, 11, 5, 4


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, weight, bias = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((B, T, C), (C, K), (C,)))
    history = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64)
    return x, weight, bias, history


@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("with_resets", [False, True])
def test_torch_path_matches_the_oracle_with_gradients(with_history, with_resets):
    x, weight, bias, history = _inputs()
    history = history if with_history else None
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 3], reset[1, 0], reset[1, 9] = True, True, True
    reset = reset if with_resets else None
    outs = []
    for mode in ("naive", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        y = short_conv(*leaves, state=history, reset=reset, mode=mode)
        y.pow(2).sum().backward()
        outs.append((y.detach(), [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-12, rtol=1e-12)
    for got, ref in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)


def test_single_token_decode_equals_the_oracle():
    x, weight, bias, history = _inputs(4)
    for t in range(3):
        got = short_conv(x[:, t : t + 1], weight, bias, state=history, mode="torch")
        torch.testing.assert_close(got, short_conv_naive(x[:, t : t + 1], weight, bias, history), atol=1e-12, rtol=1e-12)
        history = conv_state_after(x[:, t : t + 1], K, history)


def test_a_reset_cuts_the_window_like_separate_sequences():
    x, weight, bias, _ = _inputs(1)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 6] = True
    packed = short_conv(x, weight, bias, reset=reset)
    alone = torch.cat([short_conv(x[:, :6], weight, bias), short_conv(x[:, 6:], weight, bias)], 1)
    torch.testing.assert_close(packed, alone, atol=1e-12, rtol=1e-12)


def test_chunks_with_the_kept_history_equal_one_pass():
    x, weight, bias, _ = _inputs(2)
    first = short_conv(x[:, :7], weight, bias)
    history = conv_state_after(x[:, :7], K)
    second = short_conv(x[:, 7:], weight, bias, state=history)
    torch.testing.assert_close(torch.cat([first, second], 1), short_conv(x, weight, bias), atol=1e-12, rtol=1e-12)


def test_history_ends_at_the_last_real_token_of_a_right_padded_row():
    x, _, _, history = _inputs(3)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 8:] = False  # right padded: 8 real tokens
    mask[1, :] = False  # nothing real in this chunk: the history stays
    kept = conv_state_after(x * mask[..., None], K, history, mask)
    torch.testing.assert_close(kept[0], x[0, 5:8].T)
    torch.testing.assert_close(kept[1], history[1])
    short = torch.ones(1, 2, dtype=torch.bool)  # fewer real tokens than K - 1: the history fills in
    torch.testing.assert_close(conv_state_after(x[:1, :2], K, history[:1], short)[0], torch.cat([history[0, :, 2:], x[0, :2].T], -1))


def test_modes_and_errors(monkeypatch):
    x, weight, bias, history = _inputs()
    monkeypatch.delenv("LLMARCH_SHORT_CONV_MODE", raising=False)
    assert resolve_short_conv_mode("auto", x) == "torch"  # CPU
    monkeypatch.setenv("LLMARCH_SHORT_CONV_MODE", "naive")
    assert resolve_short_conv_mode("auto", x) == "naive" and resolve_short_conv_mode("torch", x) == "torch"
    monkeypatch.setenv("LLMARCH_SHORT_CONV_MODE", "fast")
    with pytest.raises(ValueError, match="LLMARCH_SHORT_CONV_MODE"):
        resolve_short_conv_mode("auto", x)
    with pytest.raises(ValueError, match="mode argument"):
        resolve_short_conv_mode("fast", x)
    with pytest.raises(RuntimeError, match="causal-conv1d"):
        short_conv(x, weight, bias, state=history, mode="cuda")
    torch.testing.assert_close(short_conv_naive(x, weight), short_conv(x, weight, mode="torch"), atol=1e-12, rtol=1e-12)
