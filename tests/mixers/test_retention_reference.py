"""`LlmArchRetention` against an independent multi-scale retention written from the RetNet paper
(Sun et al. 2023, arXiv 2307.08621), parallel form, same weights, compared on outputs.

The other retention tests compare the layer with itself (its forms, its padding, its cache); a
convention that is wrong in all forms at once (rotation direction, q.k scale, gate) passes
them. Here the reference reads only the module's parameters (q/k/v/g/o_proj and g_norm.weight)
and never imports `hf_llmarch.ops` or `hf_llmarch.modules.rotary`.

Reference, per head h with key dim d = hidden/H, value dim 2d (paper eqs. 5, 8 and sec. 3.3):
    Q = (X W_Q) * Theta,  K = (X W_K) * Theta,  V = X W_V,  Theta_n = exp(i n theta)  (the paper's
        K * conj(Theta) in Q K^T is the conj(K) below)
        (complex pairs z_j = x_j + i x_{j+d/2}, the half-split pairing that Llama's rotate_half
        uses; theta_j = 10000^(-2j/d); a real dot product of rotated vectors is Re(Q_n conj K_m))
    D_nm = gamma_h^(n-m) for n >= m, else 0,   gamma_h = 1 - 2^(-5-h)
    head_h = (Re(Q conj(K)^T) / sqrt(d) * D) V                  (QK^T/sqrt(d): sec. 3.3)
    Y_h = w * head_h / sqrt(mean(head_h^2) + eps)               (per-head norm: RMS, one learned
                                                                 w of size 2d shared by heads)
    MSR(X) = (swish(X W_G) * concat_h Y_h) W_O,    swish(z) = z * sigmoid(z)
Sec. 3.3 also describes two further rescalings (D row-normalised by sqrt(sum_i D_ni), and
R_nm / max(|sum_i R_ni|, 1)); both are one scalar per (token, head) that the per-head norm
cancels up to eps, and our ops (ops/retention/parallel.py, naive.py) apply neither, so the
reference leaves them out too.

Padding (not in the paper): a padded token neither writes nor decays, so a padded row must give,
at its real tokens, exactly the reference run on those tokens alone.

Sensitivity: the per-head norm is scale invariant up to eps, so a wrong global q.k scale only
shows through eps. NORM_EPS = 1 sits inside the range of mean(head_h^2) for these inputs (0.002
to 56, median 8), so a value_dim**-0.5 scale moves the output by 0.29; with the default 1e-6 it
moves it by only 4e-4, through the few tokens with the smallest outputs. Value factor 2 makes
key_dim**-0.5 and value_dim**-0.5 differ; the guard test at the end checks that each convention
error moves the reference far above the tolerance.
"""

import math

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

NORM_EPS = 1.0
SEQ_LEN = 20
ROTARY_THETA = 10000.0
# Not 1e-10: in a fp64 model our g_norm still normalises in fp32 (LlmArchRMSNorm, as Llama's),
# which leaves ~3e-7 on outputs of size ~2; with that norm done in fp64 the gap is 1e-15. The
# planted convention errors move the output by 0.29 to 2.8 (see the guard test at the end).
TOL = dict(atol=1e-6, rtol=1e-6)


def _rotate_complex(x, positions, sign=1.0):
    """x [L, H, d] real -> complex [L, H, d/2]: pairs (x_j, x_{j+d/2}) times exp(i n theta_j)."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    theta = ROTARY_THETA ** (-2.0 * torch.arange(half, dtype=torch.float64) / x.shape[-1])  # [d/2]
    angle = positions.to(torch.float64)[:, None, None] * theta  # [L, 1, d/2]
    return z * torch.polar(torch.ones_like(angle), sign * angle)


def paper_retention(x, params, num_heads, eps, *, rotation_sign=1.0, qk_scale=None, gate="swish"):
    """Multi-scale retention of one unpadded sequence x [L, hidden] (fp64), parallel form.
    The keyword arguments exist only for the guard test (a convention changed on purpose)."""
    L = x.shape[0]
    wq, wk, wv, wg, wo, w_norm = (params[n] for n in ("q", "k", "v", "g", "o", "norm"))
    q = (x @ wq.T).view(L, num_heads, -1)  # [L, H, d]
    k = (x @ wk.T).view(L, num_heads, -1)
    v = (x @ wv.T).view(L, num_heads, -1)  # [L, H, 2d]
    d = q.shape[-1]
    n = torch.arange(L)
    Q, K = _rotate_complex(q, n, rotation_sign), _rotate_complex(k, n, rotation_sign)
    scores = torch.einsum("nhj,mhj->hnm", Q, K.conj()).real * (d**-0.5 if qk_scale is None else qk_scale)
    gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(num_heads, dtype=torch.float64))  # [H]
    dist = (n[:, None] - n[None, :]).to(torch.float64)  # n - m
    D = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp(min=0), torch.zeros(()))  # [H, L, L]
    heads = torch.einsum("hnm,mhv->nhv", scores * D, v)  # [L, H, 2d]
    Y = w_norm * heads / torch.sqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
    g = x @ wg.T
    gated = g * torch.sigmoid(g) if gate == "swish" else torch.sigmoid(g)
    return (gated * Y.reshape(L, -1)) @ wo.T


def paper_retention_recurrent(x, params, num_heads, eps):
    """The paper's recurrent form (eq. 1-2: S_n = gamma S_{n-1} + K_n^T V_n, o_n = Q_n S_n) of the
    retention core, with the same norm/gate/output: a self-check of `paper_retention`."""
    L = x.shape[0]
    q = (x @ params["q"].T).view(L, num_heads, -1)
    k = (x @ params["k"].T).view(L, num_heads, -1)
    v = (x @ params["v"].T).view(L, num_heads, -1).to(torch.complex128)
    n = torch.arange(L)
    Q, K = _rotate_complex(q, n), _rotate_complex(k, n)
    gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(num_heads, dtype=torch.float64))
    S = torch.zeros(num_heads, Q.shape[-1], v.shape[-1], dtype=torch.complex128)
    outs = []
    for t in range(L):
        S = gamma[:, None, None] * S + K[t].conj()[:, :, None] * v[t][:, None, :]
        outs.append(torch.einsum("hj,hjv->hv", Q[t], S).real / math.sqrt(q.shape[-1]))
    heads = torch.stack(outs)
    Y = params["norm"] * heads / torch.sqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
    g = x @ params["g"].T
    return (g * torch.sigmoid(g) * Y.reshape(L, -1)) @ params["o"].T


def our_retention(mode="parallel", chunk_size=64, seed=0):
    """A fp64 retention mixer (layer 0 of a tiny retention-only model) with well-scaled random
    weights (N(0, 1/fan_in), g_norm weight around 1), plus its config and its parameters."""
    model = tiny_model(
        "hybrid",
        layer_pattern="(retention/mlp)x2",
        retention_value_factor=2,
        norm_eps=NORM_EPS,
        retention_mode=mode,
        retention_chunk_size=chunk_size,
    ).double()
    layer = model.model.layers[0].retention
    assert layer.value_dim == 2 * layer.key_dim  # so key_dim**-0.5 != value_dim**-0.5
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.g_proj, layer.o_proj):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64) / lin.in_features**0.5)
        layer.g_norm.weight.copy_(1.0 + 0.5 * torch.randn(layer.g_norm.weight.shape, generator=gen, dtype=torch.float64))
    params = {
        "q": layer.q_proj.weight, "k": layer.k_proj.weight, "v": layer.v_proj.weight,
        "g": layer.g_proj.weight, "o": layer.o_proj.weight, "norm": layer.g_norm.weight,
    }
    params = {name: p.detach().clone() for name, p in params.items()}
    return model, layer, params


def inputs(batch=2, seq_len=SEQ_LEN, hidden=64, seed=1):
    return torch.randn(batch, seq_len, hidden, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(x, params, config, mask=None):
    """The reference per row; with a [B, T] token mask, each row's real tokens run alone and the
    result sits at their positions (NaN at pads, which are not compared)."""
    out = torch.full_like(x, float("nan"))
    for b in range(x.shape[0]):
        keep = mask[b] if mask is not None else torch.ones(x.shape[1], dtype=torch.bool)
        out[b, keep] = paper_retention(x[b, keep], params, config.retention_num_heads, config.norm_eps)
    return out


def call(layer, x, mask=None, position_ids=None, cache=None):
    with torch.no_grad():
        out, _ = layer(x, attention_mask=mask, position_ids=position_ids, cache=cache)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """These are [20 x 64] fp64 ops: a second intra-op thread only adds synchronisation, which on
    a busy machine made this file ~30x slower (11 s against 0.3 s). The suite's setting returns after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reference_parallel_and_recurrent_forms_agree():
    model, _, params = our_retention()
    x = inputs(batch=1)[0]
    c = model.config
    torch.testing.assert_close(
        paper_retention(x, params, c.retention_num_heads, c.norm_eps),
        paper_retention_recurrent(x, params, c.retention_num_heads, c.norm_eps),
        **TOL,
    )


@pytest.mark.parametrize("mode,chunk_size", [("parallel", 64), ("chunk", 6), ("recurrent", 64), ("naive", 64)])
def test_matches_paper_reference(mode, chunk_size):
    model, layer, params = our_retention(mode, chunk_size)
    x = inputs()
    torch.testing.assert_close(call(layer, x), reference(x, params, model.config), **TOL)


@pytest.mark.parametrize("mode,chunk_size", [("parallel", 64), ("chunk", 6)])
def test_left_padded_rows_match_reference_on_their_tokens(mode, chunk_size):
    model, layer, params = our_retention(mode, chunk_size)
    x = inputs(batch=3)
    mask = torch.ones(3, SEQ_LEN, dtype=torch.bool)
    mask[0, :5] = False  # left padding
    mask[2, :SEQ_LEN - 7] = False
    position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)  # what a model passes for left padding
    ref = reference(x, params, model.config, mask)
    for pos in (None, position_ids):  # rotary is relative: the position offset of a row cancels
        out = call(layer, x, mask, pos)
        torch.testing.assert_close(out[mask], ref[mask], **TOL)


@pytest.mark.parametrize("mode,chunk_size", [("auto", 64), ("chunk", 4)])
def test_chunks_through_the_cache_match_reference_on_the_full_sequence(mode, chunk_size):
    """Prefill, one decode token, then the rest, carrying the state in
    `DynamicCache(config=model.config)`: equals the reference on the whole sequence (without its
    pads). Row 0 is left-padded; row 1 ends its prefill with two pads, which must neither write
    nor decay the state the next chunks read (left pads alone cannot show a decay: the state is
    still zero there)."""
    model, layer, params = our_retention(mode, chunk_size)
    x = inputs()
    mask = torch.ones(2, SEQ_LEN, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 7:9] = False
    position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    pieces = []
    for a, b in ((0, 9), (9, 10), (10, SEQ_LEN)):
        chunk_mask = mask[:, a:b] if not mask[:, a:b].all() else None
        pieces.append(call(layer, x[:, a:b], chunk_mask, position_ids[:, a:b], cache))
    out = torch.cat(pieces, 1)
    ref = reference(x, params, model.config, mask)
    torch.testing.assert_close(out[mask], ref[mask], **TOL)


def test_inputs_make_each_convention_observable():
    """Guard for the choices above (eps, value factor, inputs): a flipped rotation, a
    value_dim**-0.5 q.k scale, or a sigmoid gate each move the reference far above TOL."""
    model, layer, params = our_retention()
    x = inputs(batch=1)[0]
    c = model.config
    base = paper_retention(x, params, c.retention_num_heads, c.norm_eps)
    variants = {
        "rotation": dict(rotation_sign=-1.0),
        "scale": dict(qk_scale=layer.value_dim**-0.5),
        "gate": dict(gate="sigmoid"),
    }
    for name, change in variants.items():
        moved = (paper_retention(x, params, c.retention_num_heads, c.norm_eps, **change) - base).abs().max()
        assert moved > 1e-3, (name, moved)
