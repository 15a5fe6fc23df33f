import logging

import pytest
import torch
from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

import hf_llmarch.ops.wkv4 as wkv
from hf_llmarch.ops.wkv4 import (
    EMPTY_LOG_SCALE,
    resolve_wkv4_mode,
    wkv4,
    wkv4_chunk,
    wkv4_initial_state,
    wkv4_naive,
)

B, C = 2, 6


def _inputs(T, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    time_decay, time_first = (torch.randn(C, generator=gen, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(B, T, C, generator=gen, dtype=dtype) for _ in range(2))
    # A reachable state: any numerator, a positive denominator, a finite log-scale.
    a, b, p = (torch.randn(B, C, generator=gen, dtype=dtype) for _ in range(3))
    s0 = torch.stack([a, b.abs() + 0.5, p], dim=1)
    return time_decay, time_first, k, v, s0


def _forms(chunk_sizes=(4, 16)):
    forms = {"recurrent": lambda *a, **kw: wkv4(*a, mode="recurrent", **kw)}
    for c in chunk_sizes:
        forms[f"chunk{c}"] = lambda *a, _c=c, **kw: wkv4_chunk(*a, chunk_size=_c, **kw)
    return forms


def _run_with_grads(fn, td, tf, k, v, s0, **kwargs):
    leaves = [x.clone().requires_grad_() for x in (td, tf, k, v)]
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    o, state = fn(*leaves, state=s0_leaf, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    inputs = leaves + ([s0_leaf] if s0_leaf is not None else [])
    # A row that resets at token 0 never reads s0: its gradient there is exactly 0.
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return o, state, grads


def _resets(T: int) -> torch.Tensor:
    """Row 0: sequences start at 0 (continuing s0), 3, 4 and T-2; row 1: at 0 (dropping s0) and T//2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


def _pads(T: int) -> torch.Tensor:
    """token_mask with pads at 1, 2 and T-1 in row 0, and at 0 (also a reset) and 5 in row 1."""
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, [p for p in (1, 2, T - 1) if p < T]] = False
    mask[1, [p for p in (0, 5) if p < T]] = False
    return mask


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("use_s0", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_forms_agree_fp64(T, use_s0, packed):
    td, tf, k, v, s0 = _inputs(T)
    s0 = s0 if use_s0 else None
    extra = {"token_mask": _pads(T), "reset": _resets(T)} if packed else {}
    ref_o, ref_s, ref_grads = _run_with_grads(wkv4_naive, td, tf, k, v, s0, **extra)
    assert ref_o.dtype == torch.float64 and ref_s.shape == (B, 3, C)
    for name, fn in _forms().items():
        o, s, grads = _run_with_grads(fn, td, tf, k, v, s0, **extra)
        torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10, msg=f"{name} output")
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=f"{name} state")
        for i, (gr, ref_gr) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(gr, ref_gr, rtol=1e-10, atol=1e-10, msg=f"{name} grad {i}")


def _definition(td, tf, k, v, s0=None):
    """O(T^2) sums straight from the definition, in the inputs' dtype, with no stabilising shift.
    Returns (wkv, final numerator, final denominator); the state (a, b, p) stands for a e^p, b e^p."""
    T, w = k.shape[1], td.exp()
    t = torch.arange(T, dtype=k.dtype)
    gap = (t[:, None] - 1 - t[None, :])[..., None]  # [T, T, 1]: decay steps from i to t
    weight = torch.where(gap >= 0, (k[:, None] - gap * w).exp(), 0.0)  # [B, T(t), T(i), C]
    num, den = (weight * v[:, None]).sum(2), weight.sum(2)
    last = (k - (T - 1 - t)[:, None] * w).exp()  # [B, T, C]: decay from i to the end
    final_num, final_den = (last * v).sum(1), last.sum(1)
    if s0 is not None:
        carried = (s0[:, 2, None] - t[:, None] * w).exp()  # [B, T, C]: s0 decayed t steps
        num, den = num + carried * s0[:, 0, None], den + carried * s0[:, 1, None]
        carried = (s0[:, 2] - T * w).exp()
        final_num, final_den = final_num + carried * s0[:, 0], final_den + carried * s0[:, 1]
    bonus = (tf + k).exp()
    return (num + bonus * v) / (den + bonus), final_num, final_den


@pytest.mark.parametrize("use_s0", [False, True])
def test_naive_matches_definition(use_s0):
    td, tf, k, v, s0 = _inputs(9)
    s0 = s0 if use_s0 else None
    o, state = wkv4_naive(td, tf, k, v, state=s0)
    ref_o, ref_num, ref_den = _definition(td, tf, k, v, s0)
    torch.testing.assert_close(o, ref_o, rtol=1e-12, atol=1e-12)
    scale = state[:, 2].exp()
    torch.testing.assert_close(state[:, 0] * scale, ref_num, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[:, 1] * scale, ref_den, rtol=1e-12, atol=1e-12)


def test_initial_state_is_empty():
    s = wkv4_initial_state(B, C)
    assert s.shape == (B, 3, C) and s.dtype == torch.float32
    assert (s[:, :2] == 0).all() and (s[:, 2] == EMPTY_LOG_SCALE).all()
    td, tf, k, v, _ = _inputs(5, dtype=torch.float32)
    o1, s1 = wkv4_naive(td, tf, k, v)
    o2, s2 = wkv4_naive(td, tf, k, v, state=s)
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [wkv4_naive, wkv4_chunk], ids=["naive", "chunk"])
def test_matches_transformers_cpu(fn):
    # transformers keeps the state as a list [num, den, max] of [B, C]: our state.unbind(1).
    td, tf, k, v, _ = (x.float() for x in _inputs(12))
    ref_o, ref_s = rwkv_linear_attention_cpu(td, tf, k[:, :7], v[:, :7], return_state=True)
    ref_o2, ref_s2 = rwkv_linear_attention_cpu(td, tf, k[:, 7:], v[:, 7:], state=ref_s)
    o, s = fn(td, tf, k[:, :7], v[:, :7])
    o2, s2 = fn(td, tf, k[:, 7:], v[:, 7:], state=s)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    for mine, ref in ((o, ref_o), (o2, ref_o2), (s, torch.stack(ref_s, 1)), (s2, torch.stack(ref_s2, 1))):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_large_keys_stay_finite_fp32():
    td, tf, k, v, s0 = _inputs(40)
    k = 100 * torch.sign(k) + k  # |k| ~ 100: e^k overflows fp32
    ref_o, ref_s = wkv4_naive(td, tf, k, v, state=s0)
    for name, fn in {"naive": wkv4_naive, **_forms(chunk_sizes=(16,))}.items():
        o, s, grads = _run_with_grads(fn, td.float(), tf.float(), k.float(), v.float(), s0.float())
        assert torch.isfinite(o).all() and torch.isfinite(s).all(), name
        assert all(torch.isfinite(g).all() for g in grads), name
        torch.testing.assert_close(o.double(), ref_o, rtol=1e-4, atol=1e-4, msg=name)
        torch.testing.assert_close(s.double(), ref_s, rtol=1e-4, atol=1e-4, msg=name)
    # Guards the test itself: the un-stabilised sums are not finite here.
    assert not torch.isfinite(_definition(td.float(), tf.float(), k.float(), v.float())[0]).all()


@pytest.mark.parametrize("where", ["left", "middle", "right"])
@pytest.mark.parametrize("use_s0", [False, True])
def test_padding_is_identity(where, use_s0):
    T, P = 9, 4
    td, tf, k, v, s0 = _inputs(T)
    s0 = s0 if use_s0 else None
    start = {"left": 0, "middle": 3, "right": T}[where]
    gen = torch.Generator().manual_seed(2)

    def pad(x):  # insert P junk positions at `start`; large keys would dominate if they wrote
        junk = 5 * torch.randn(B, P, C, dtype=x.dtype, generator=gen)
        return torch.cat([x[:, :start], junk, x[:, start:]], dim=1)

    mask = torch.ones(B, T + P, dtype=torch.bool)
    mask[:, start : start + P] = False
    ref_o, ref_s = wkv4_naive(td, tf, k, v, state=s0)
    for name, fn in {"naive": wkv4_naive, **_forms()}.items():
        o, s = fn(td, tf, pad(k), pad(v), state=s0, token_mask=mask)
        assert torch.isfinite(o).all(), name
        torch.testing.assert_close(o[:, mask[0]], ref_o, rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("T", [7, 33])
def test_reset_equals_separate_sequences(T):
    """Packed rows: each sequence sees only itself; the initial state reaches only the first."""
    td, tf, k, v, s0 = _inputs(T)
    reset = _resets(T)
    for name, fn in {"naive": wkv4_naive, **_forms()}.items():
        o, state = fn(td, tf, k, v, state=s0, reset=reset)
        for row in range(B):
            starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
            init = None if reset[row, 0] else s0[row : row + 1]
            for a, e in zip(starts, starts[1:]):
                o_ref, s_ref = wkv4_naive(td, tf, k[row : row + 1, a:e], v[row : row + 1, a:e], state=init)
                torch.testing.assert_close(o[row : row + 1, a:e], o_ref, rtol=1e-10, atol=1e-10, msg=name)
                init = None
            torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-10, atol=1e-10, msg=name)


def test_prefill_then_continue_equals_full_run(monkeypatch):
    monkeypatch.delenv(wkv.MODE_ENV_VAR, raising=False)
    td, tf, k, v, s0 = _inputs(20)
    ref_o, ref_s = wkv4_naive(td, tf, k, v, state=s0)
    _, state = wkv4(td, tf, k[:, :9], v[:, :9], state=s0, chunk_size=4)
    for t in range(9, 12):  # decode, one token at a time
        o_t, state = wkv4(td, tf, k[:, t : t + 1], v[:, t : t + 1], state=state)
        torch.testing.assert_close(o_t, ref_o[:, t : t + 1], rtol=1e-10, atol=1e-10)
    o, state = wkv4(td, tf, k[:, 12:], v[:, 12:], state=state, chunk_size=4)  # multi-token continuation
    torch.testing.assert_close(o, ref_o[:, 12:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_s, rtol=1e-10, atol=1e-10)


@pytest.fixture
def dispatched(monkeypatch):
    """Records which form `wkv4` calls; fla-core is made to look absent."""
    monkeypatch.delenv(wkv.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(wkv, "_fla_kernel", lambda: None)
    called = []
    for name in ("wkv4_chunk", "wkv4_naive"):

        def wrapper(*args, _name=name, _fn=getattr(wkv, name), **kwargs):
            called.append(_name.removeprefix("wkv4_"))
            return _fn(*args, **kwargs)

        monkeypatch.setattr(wkv, name, wrapper)
    return called


def test_auto_mode_dispatch(dispatched):
    k1, k8 = torch.zeros(B, 1, C), torch.zeros(B, 8, C)
    assert resolve_wkv4_mode("auto", k1) == "recurrent"
    assert resolve_wkv4_mode("auto", k8) == "chunk"
    assert resolve_wkv4_mode("naive", k1) == "naive"
    for T in (1, 8):
        wkv4(*_inputs(T)[:4])
    wkv4(*_inputs(8)[:4], mode="naive")
    assert dispatched == ["naive", "chunk", "naive"]  # recurrent runs the naive loop


def test_env_var_overrides_auto(dispatched, monkeypatch):
    monkeypatch.setenv(wkv.MODE_ENV_VAR, "naive")
    assert resolve_wkv4_mode("auto", torch.zeros(B, 8, C)) == "naive"
    wkv4(*_inputs(8)[:4])
    wkv4(*_inputs(8)[:4], mode="chunk")  # an explicit mode wins
    assert dispatched == ["naive", "chunk"]
    monkeypatch.setenv(wkv.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus.*LLMARCH_WKV4_MODE"):
        wkv4(*_inputs(3)[:4])


def test_bad_mode_raises():
    with pytest.raises(ValueError, match="'fused'.*chunk.*recurrent.*naive.*fla"):
        wkv4(*_inputs(3)[:4], mode="fused")


def test_fla_mode_says_what_is_missing(dispatched, monkeypatch):
    with pytest.raises(RuntimeError, match="fla-core.*not installed"):
        wkv4(*_inputs(3)[:4], mode="fla")
    monkeypatch.setattr(wkv, "_fla_kernel", lambda: object())  # installed, but these inputs cannot use it
    with pytest.raises(RuntimeError, match="not CUDA"):
        wkv4(*_inputs(3)[:4], mode="fla")
    with pytest.raises(RuntimeError, match="token_mask"):
        wkv4(*_inputs(3)[:4], mode="fla", token_mask=torch.ones(B, 3, dtype=torch.bool))
    assert resolve_wkv4_mode("auto", torch.zeros(B, 8, C)) == "chunk"
    assert dispatched == []


def test_fla_path_state_layout(monkeypatch):
    """The fla kernel takes raw time_decay and a [B, 3, 1, C] state; a stand-in checks the plumbing."""

    def fake_kernel(w, u, k, v, state):
        assert state.shape == (B, 3, 1, C) and k.dtype == torch.float32
        o, s = wkv4_naive(w, u, k, v, state=state[:, :, 0])
        return o, s[:, :, None]

    monkeypatch.setattr(wkv, "_fla_kernel", lambda: fake_kernel)
    td, tf, k, v, s0 = (x.float() for x in _inputs(5))
    o, s = wkv._wkv4_fla(td, tf, k.bfloat16(), v.bfloat16(), s0)
    ref_o, ref_s = wkv4_naive(td, tf, k.bfloat16(), v.bfloat16(), state=s0)
    assert o.dtype == torch.bfloat16 and s.shape == (B, 3, C) and s.dtype == torch.float32
    torch.testing.assert_close(o, ref_o, rtol=0, atol=0)
    torch.testing.assert_close(s, ref_s, rtol=0, atol=0)
    _, s_empty = wkv._wkv4_fla(td, tf, k, v, None)
    torch.testing.assert_close(s_empty, wkv4_naive(td, tf, k, v)[1], rtol=0, atol=0)


def test_logs_each_path_once(dispatched, monkeypatch, caplog):
    monkeypatch.setattr(wkv, "_logged_paths", set())
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    for T in (8, 8, 1, 1):
        wkv4(*_inputs(T)[:4])
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert msgs == [
        "RWKV-4 WKV: using the pure-torch chunk path (fla-core not installed)",
        "RWKV-4 WKV: using the pure-torch recurrent path (fla-core not installed)",
    ]
