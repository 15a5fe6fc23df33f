import logging
import math

import pytest
import torch
import torch.nn.functional as F

import hf_llmarch.ops.dplr_delta as dplr
from hf_llmarch.ops.dplr_delta import dplr_delta, dplr_delta_chunk, dplr_delta_naive, resolve_dplr_mode

B, H, DK, DV = 2, 2, 4, 4
W_BOUND = -math.exp(-0.5)  # RWKV-7's lowest per-step log-decay, -0.6065


def _rwkv7(T, dtype=torch.float64, seed=0):
    """RWKV-7 quantities: r, k~, v, kappa_hat (L2-normalised per head), a_rate, log-decay, s0 (KV)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    r, k, v = rand(B, T, H, DK), rand(B, T, H, DK), rand(B, T, H, DV)
    k_k, k_a = rand(H, DK), rand(H, DK)
    a_rate = torch.sigmoid(rand(B, T, H, DK))
    kappa_hat = F.normalize(k * k_k, dim=-1)
    k_tilde = k * (1 + (a_rate - 1) * k_a)
    log_decay = W_BOUND * torch.sigmoid(rand(B, T, H, DK))
    return r, k_tilde, v, kappa_hat, a_rate, log_decay, rand(B, H, DK, DV)


def _inputs(T, dtype=torch.float64, seed=0):
    """Op arguments (q, k, v, a, b, log_decay, s0) with a = -kappa_hat, b = kappa_hat * a_rate."""
    r, k_tilde, v, kappa_hat, a_rate, log_decay, s0 = _rwkv7(T, dtype, seed)
    return r, k_tilde, v, -kappa_hat, kappa_hat * a_rate, log_decay, s0


FORMS = {
    "recurrent": lambda *x, **kw: dplr_delta(*x, mode="recurrent", **kw),
    "chunk4": lambda *x, **kw: dplr_delta_chunk(*x, chunk_size=4, **kw),
    "chunk16": lambda *x, **kw: dplr_delta_chunk(*x, chunk_size=16, **kw),
}


def _run_with_grads(fn, inputs, s0, **kwargs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    o, state = fn(*leaves, initial_state=s0_leaf, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    # From a zero state the first token's a and log_decay act on zeros: their gradients are exactly 0.
    grads = torch.autograd.grad(loss, leaves + [s0_leaf] * (s0 is not None), materialize_grads=True)
    return o, state, grads


def _assert_forms_agree(T, s0, reset=None):
    q, k, v, a, b, w, _ = _inputs(T)
    ref_o, ref_s, ref_grads = _run_with_grads(dplr_delta_naive, (q, k, v, a, b, w), s0, reset=reset)
    assert ref_o.dtype == ref_s.dtype == torch.float64
    names = ("q", "k", "v", "a", "b", "log_decay", "initial_state")
    for form, fn in FORMS.items():
        o, s, grads = _run_with_grads(fn, (q, k, v, a, b, w), s0, reset=reset)
        assert o.shape == (B, T, H, DV) and s.shape == (B, H, DK, DV), form
        torch.testing.assert_close(o, ref_o, rtol=1e-10, atol=1e-10, msg=f"{form} output")
        torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10, msg=f"{form} state")
        for name, gr, ref_gr in zip(names, grads, ref_grads):
            torch.testing.assert_close(gr, ref_gr, rtol=1e-10, atol=1e-10, msg=f"{form} grad {name}")


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("use_s0", [False, True])
def test_forms_agree_fp64(T, use_s0):
    _assert_forms_agree(T, _inputs(T)[-1] if use_s0 else None)


def _resets(T):
    """Row 0: sequences start at 0 (continuing s0), 3, 4 and T-2; row 1: at 0 (dropping s0) and T//2."""
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [7, 33])
def test_forms_agree_with_reset_fp64(T):
    _assert_forms_agree(T, _inputs(T)[-1], reset=_resets(T))


@pytest.mark.parametrize("form", ["naive", *FORMS])
def test_packed_rows_equal_separate_runs(form):
    T = 33
    fn = FORMS.get(form, dplr_delta_naive)
    *x, s0 = _inputs(T)
    reset = _resets(T)
    o, state = fn(*x, initial_state=s0, reset=reset)
    for row in range(B):
        starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
        init = None if reset[row, 0] else s0[row : row + 1]
        for lo, hi in zip(starts, starts[1:]):
            o_ref, s_ref = dplr_delta_naive(*(t[row : row + 1, lo:hi] for t in x), initial_state=init)
            torch.testing.assert_close(o[row : row + 1, lo:hi], o_ref, rtol=1e-12, atol=1e-12)
            init = None
        torch.testing.assert_close(state[row : row + 1], s_ref, rtol=1e-12, atol=1e-12)


def _paper_vk(r, k_tilde, v, kappa_hat, a_rate, log_decay, s0_vk):
    """RWKV-7 as the paper writes it, VK layout [B, H, Dv, Dk]:
    S_t = S_{t-1} (diag(d_t) - kappa^T (a * kappa)) + v^T k~, o_t = S_t r_t."""
    state, outs = s0_vk, []
    for t in range(r.shape[1]):
        kappa = kappa_hat[:, t]  # [B, H, Dk]
        removal = kappa[..., :, None] * (a_rate[:, t] * kappa)[..., None, :]  # [B, H, Dk, Dk]
        transition = torch.diag_embed(log_decay[:, t].exp()) - removal
        state = state @ transition + v[:, t, :, :, None] * k_tilde[:, t, :, None, :]
        outs.append((state @ r[:, t, :, :, None]).squeeze(-1))
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize("form", ["naive", "chunk4"])
def test_matches_paper_vk_recurrence(form):
    r, k_tilde, v, kappa_hat, a_rate, w, s0 = _rwkv7(33)
    ref_o, ref_s = _paper_vk(r, k_tilde, v, kappa_hat, a_rate, w, s0.transpose(-1, -2))
    fn = FORMS.get(form, dplr_delta_naive)
    o, s = fn(r, k_tilde, v, -kappa_hat, kappa_hat * a_rate, w, initial_state=s0)
    torch.testing.assert_close(o, ref_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, ref_s.transpose(-1, -2), rtol=1e-12, atol=1e-12)


def test_fp32_at_bound_decay():
    """Every step at RWKV-7's strongest decay: a chunk of 16 scales keys by e^{9.7}, still exact in fp32."""
    T = 64
    q, k, v, a, b, _, s0 = _inputs(T)
    w = torch.full_like(q, W_BOUND)
    ref_o, ref_s = dplr_delta_naive(q, k, v, a, b, w, initial_state=s0)
    o, s, grads = _run_with_grads(dplr_delta_chunk, (x.float() for x in (q, k, v, a, b, w)), s0.float())
    assert o.dtype == s.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(g).all() for g in grads)
    rel = lambda x, y: ((x.double() - y).norm() / y.norm()).item()  # noqa: E731
    assert rel(o, ref_o) < 1e-5 and rel(s, ref_s) < 1e-5, (rel(o, ref_o), rel(s, ref_s))


def test_scale_and_decode_continue_prefill():
    q, k, v, a, b, w, s0 = _inputs(12)
    ref_o, ref_s = dplr_delta_naive(q, k, v, a, b, w, scale=0.5, initial_state=s0)
    _, state = dplr_delta(*(x[:, :9] for x in (q, k, v, a, b, w)), scale=0.5, initial_state=s0, chunk_size=4)
    for t in range(9, 12):
        o_t, state = dplr_delta(*(x[:, t : t + 1] for x in (q, k, v, a, b, w)), scale=0.5, initial_state=state)
        torch.testing.assert_close(o_t[:, 0], ref_o[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, ref_s, rtol=1e-12, atol=1e-12)


@pytest.fixture
def no_fla(monkeypatch):
    """A clean mode environment with fla-core absent, whether or not it is installed here."""
    monkeypatch.delenv(dplr.MODE_ENV_VAR, raising=False)
    monkeypatch.setattr(dplr, "_fla_kernel", lambda: None)
    monkeypatch.setattr(dplr, "_logged_paths", set())


def test_auto_mode_and_env_override(no_fla, monkeypatch):
    q = _inputs(5)[0]
    assert resolve_dplr_mode("auto", q[:, :1]) == "recurrent"
    assert resolve_dplr_mode("auto", q) == "chunk"
    monkeypatch.setenv(dplr.MODE_ENV_VAR, "naive")
    assert resolve_dplr_mode("auto", q) == "naive"
    assert resolve_dplr_mode("chunk", q) == "chunk"  # an explicit mode wins
    monkeypatch.setenv(dplr.MODE_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=f"'bogus'.*{dplr.MODE_ENV_VAR}"):
        dplr_delta(*_inputs(3)[:6])


def test_bad_mode_raises(no_fla):
    with pytest.raises(ValueError, match="'fused'.*chunk.*recurrent.*naive.*fla"):
        dplr_delta(*_inputs(3)[:6], mode="fused")


def test_fla_mode_without_fla_raises(no_fla, monkeypatch):
    with pytest.raises(RuntimeError, match="fla-core not installed"):
        dplr_delta(*_inputs(3)[:6], mode="fla")
    monkeypatch.setenv(dplr.MODE_ENV_VAR, "fla")
    with pytest.raises(RuntimeError, match=dplr.MODE_ENV_VAR):
        dplr_delta(*_inputs(3)[:6])


def test_fla_path_wiring(no_fla, monkeypatch):
    """With a stand-in kernel: "auto" picks it, and it receives fla's argument names (r, w, ...)."""
    calls = []

    def fake_chunk_rwkv7(*, r, w, k, v, a, b, scale, initial_state, output_final_state):
        calls.append(output_final_state)
        return dplr_delta_naive(r, k, v, a, b, w, scale, initial_state)

    monkeypatch.setattr(dplr, "_fla_kernel", lambda: fake_chunk_rwkv7)
    monkeypatch.setattr(dplr, "_fla_blocker", lambda q, reset: "reset given" if reset is not None else None)
    *x, s0 = _inputs(7)
    assert resolve_dplr_mode("auto", x[0]) == "fla"
    assert resolve_dplr_mode("auto", x[0], reset=_resets(7)) == "chunk"
    o, s = dplr_delta(*x, scale=0.5, initial_state=s0)
    ref_o, ref_s = dplr_delta_naive(*x, scale=0.5, initial_state=s0)
    assert calls == [True]
    torch.testing.assert_close(o, ref_o)
    torch.testing.assert_close(s, ref_s.float())


def test_logs_path_once(no_fla, caplog):
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    x = _inputs(3)[:6]
    dplr_delta(*x)
    dplr_delta(*x)
    msgs = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert msgs == ["dplr delta rule (RWKV-7): using the pure-torch chunk path (fla-core not installed)"]
