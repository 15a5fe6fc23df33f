"""Hyena (`hyena`): the FFT long conv equals the Toeplitz oracle on outputs and gradients (packed rows
too); the mixer's FFT and naive paths agree on every parameter gradient; the exact-history decode
(one token and multi-token continuation, orders 2 and 3) equals the full forward; padding left or
right and packing are exact; generate (greedy, batched left-padded, beam); the filter length limit,
bad settings, save/load and the parameter count."""

import logging
import math

import pytest
import torch
from transformers import DataCollatorWithFlattening, DynamicCache

import hf_llmarch.ops.hyena as hyena_ops
from hf_llmarch.models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM
from hf_llmarch.ops.hyena import long_conv, long_conv_fft, long_conv_naive, long_conv_step


VOCAB = 100
TOL = dict(atol=1e-10, rtol=1e-8)


def _config(**overrides):
    fields = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, layer_pattern="(hyena/mlp)x2",
        position_embedding_type="none", max_position_embeddings=128, initializer_range=0.2,
    )
    return LlmArchHybridConfig(**(fields | overrides))


def _model(seed=0, **overrides):
    """fp64, with random biases: zero ones (the init) would hide a pad that leaks through a bias."""
    torch.manual_seed(seed)
    model = LlmArchHybridForCausalLM(_config(**overrides)).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.bias") or name.endswith("short_filter.bias"):
                param.normal_(0, 0.2)
    return model


def _ids(*shape, seed=0):
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _op_inputs(T, L=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, T, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(5, L or T + 4, generator=gen, dtype=torch.float64)  # no decay: a wrapped tail would show
    return u, h, torch.randn(5, generator=gen, dtype=torch.float64)


def _with_grads(fn, u, h, bias, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (u, h, bias)]
    y = fn(*leaves, **kwargs)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return y, torch.autograd.grad((y * weight).sum(), leaves)


def _resets(T):
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[0, [p for p in (3, 4, T - 2) if 0 < p < T]] = True
    reset[1, [0, T // 2]] = True
    return reset


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("packed", [False, True])
def test_fft_equals_naive_on_outputs_and_gradients(T, packed):
    u, h, bias = _op_inputs(T)
    reset = _resets(T) if packed else None
    want, want_grads = _with_grads(long_conv_naive, u, h, bias, reset=reset)
    got, got_grads = _with_grads(long_conv_fft, u, h, bias, reset=reset)
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_packed_rows_equal_each_sequence_alone():
    T = 29
    u, h, bias = _op_inputs(T)
    reset = _resets(T)
    y = long_conv(u, h, bias, reset=reset)
    for row in range(2):
        starts = [0, *[t for t in range(1, T) if reset[row, t]], T]
        for a, e in zip(starts, starts[1:]):
            torch.testing.assert_close(y[row, a:e], long_conv_naive(u[row : row + 1, a:e], h, bias)[0], **TOL)


def test_fft_does_not_wrap_and_step_reads_the_history():
    u, h, bias = _op_inputs(16, L=16)
    want = long_conv_naive(u, h, bias)
    circular = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=16) * torch.fft.rfft(h, n=16), n=16).transpose(1, 2)
    assert (circular + bias * u - want).abs().max() > 1e-2  # what the 2T padding prevents
    torch.testing.assert_close(long_conv_fft(u, h, bias), want, **TOL)
    for t in (1, 9, 16):
        torch.testing.assert_close(long_conv_step(u[:, :t].transpose(1, 2), h, bias), want[:, t - 1], **TOL)


def test_mode_dispatch_env_var_and_log_line(monkeypatch, caplog):
    monkeypatch.setattr(hyena_ops, "_logged", set())
    monkeypatch.delenv(hyena_ops.MODE_ENV_VAR, raising=False)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    assert hyena_ops.resolve_hyena_mode("auto") == "fft"
    long_conv(*_op_inputs(5))
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_llmarch"]
    assert messages == ["hyena long conv: using the pure-torch FFT path (no fused kernel exists for implicit long convolutions)"]
    monkeypatch.setenv(hyena_ops.MODE_ENV_VAR, "naive")
    assert hyena_ops.resolve_hyena_mode("auto") == "naive" and hyena_ops.resolve_hyena_mode("fft") == "fft"
    monkeypatch.setenv(hyena_ops.MODE_ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="'cuda'.*LLMARCH_HYENA_MODE"):
        long_conv(*_op_inputs(5))


@pytest.mark.parametrize("mode", ["fft", "naive"])
def test_half_precision_inputs_keep_their_dtype(mode):
    u, h, bias = (t.float() for t in _op_inputs(20))
    y = long_conv(u.bfloat16(), h.bfloat16(), bias.bfloat16(), mode=mode)
    assert y.dtype == torch.bfloat16
    want = long_conv_naive(u.bfloat16().double(), h.bfloat16().double(), bias.bfloat16().double())
    torch.testing.assert_close(y.double(), want, atol=0.1, rtol=0.02)


def test_filter_follows_safari_hyena_filter():
    """safari's HyenaFilter.filter, transcribed: complex-exponential features over l_max, the MLP,
    the fixed decay window, then 'l (v o) -> o v l'."""
    mixer = _model(hyena_order=3).model.layers[0].mixer
    L, T, d = 128, 40, 32
    t = torch.linspace(0, 1, L, dtype=torch.float64)[:, None]
    w = 2 * math.pi * torch.linspace(0, L - 1, L, dtype=torch.float64)[:, None] / L
    z = torch.exp(-1j * torch.linspace(1e-4, 15, 16, dtype=torch.float64)[None] * w)
    features = torch.cat([t, z.real, z.imag], dim=-1)[:T]
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, 2 * d, dtype=torch.float64)
    k = mixer.filter_fn.implicit_filter(features) * torch.exp(-t[:T] * deltas.abs())  # [T, (v o)]
    h, bias = mixer.filter_fn(T)
    torch.testing.assert_close(h, k.T.reshape(d, 2, T).permute(1, 0, 2), **TOL)
    torch.testing.assert_close(bias, mixer.filter_fn.bias.view(d, 2).T, atol=0, rtol=0)


def test_mixer_fft_equals_naive_on_all_parameter_gradients():
    mixer = _model().model.layers[0].mixer.train()
    x = torch.randn(2, 21, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for mode in ("naive", "fft"):
        mixer.mode = mode
        out, _ = mixer(x)
        results.append((out, torch.autograd.grad(out.pow(2).sum(), list(mixer.parameters()))))
    (want, want_grads), (got, got_grads) = results
    assert want.abs().max() > 1e-2  # the long convolutions carry signal
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("order", [2, 3])
def test_prefill_decode_and_continuation_equal_the_full_forward(order):
    model = _model(hyena_order=order)
    ids = _ids(2, 23)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        chunks = [model(ids[:, :9], past_key_values=cache, use_cache=True).logits]
        chunks += [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(9, 14)]
        chunks.append(model(ids[:, 14:], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(chunks, 1), full, **TOL)
    # The exact history: every long-conv input so far, all orders on channels.
    assert cache.layers[0].recurrent_states[0].shape == (2, (order - 1) * 32, 23)
    assert cache.layers[0].conv_states[0].shape == (2, (order + 1) * 32, 2)


def test_left_padded_rows_equal_unpadded_and_batched_greedy_equals_each_row():
    model = _model(pad_token_id=0)
    rows = [_ids(1, 11, seed=1), _ids(1, 6, seed=2)]
    ids = torch.cat([rows[0], torch.cat([torch.zeros(1, 5, dtype=torch.long), rows[1]], 1)])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(padded[1, 5:], model(rows[1]).logits[0], **TOL)
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        for row, alone in enumerate(rows):
            single = model.generate(alone, max_new_tokens=6, do_sample=False)
            assert batched[row, -6:].tolist() == single[0, -6:].tolist()


def test_right_padded_prefill_then_continuation_equals_unpadded():
    model = _model()
    rows, nxt = [_ids(1, 9, seed=3), _ids(1, 13, seed=4)], _ids(2, 4, seed=5)
    ids = torch.cat([torch.cat([rows[0], torch.zeros(1, 4, dtype=torch.long)], 1), rows[1]])
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        prefill = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
        cont = model(nxt, past_key_values=cache, use_cache=True).logits
        for row, alone in enumerate(rows):
            want = model(torch.cat([alone, nxt[row : row + 1]], 1)).logits[0]
            torch.testing.assert_close(prefill[row, : alone.shape[1]], want[: alone.shape[1]], **TOL)
            torch.testing.assert_close(cont[row], want[-4:], **TOL)


def test_packed_rows_equal_separate_runs_and_the_cache_continues_the_last():
    model = _model()
    sequences = [_ids(n, seed=n).tolist() for n in (30, 20, 9)]
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])
    nxt = _ids(1, 3, seed=6)
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True)
        alone = [model(torch.tensor([s])).logits[0] for s in sequences]
        cont = model(nxt, past_key_values=out.past_key_values, use_cache=True).logits
        want = model(torch.cat([torch.tensor([sequences[-1]]), nxt], 1)).logits[:, -3:]
    torch.testing.assert_close(out.logits[0], torch.cat(alone), **TOL)
    torch.testing.assert_close(cont, want, **TOL)


def test_beam_search_reorders_the_history():
    model = _model()
    ids = _ids(2, 7, seed=7)
    kwargs = dict(max_new_tokens=5, num_beams=3, do_sample=False, early_stopping=False)
    with torch.no_grad():
        cached = model.generate(ids, **kwargs)
        recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert cached.tolist() == recomputed.tolist()


def test_inputs_past_hyena_max_len_are_refused():
    model = _model(max_position_embeddings=16)
    assert model.config.hyena_max_len == 16
    with torch.no_grad():
        model(_ids(1, 16))
        with pytest.raises(ValueError, match="hyena_max_len=16"):
            model(_ids(1, 17))
        cache = DynamicCache(config=model.config)
        model(_ids(1, 15), past_key_values=cache, use_cache=True)
        model(_ids(1, 1), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="hyena_max_len=16.*16 cached"):
            model(_ids(1, 1), past_key_values=cache, use_cache=True)


def test_filter_is_built_once_per_cache_and_afresh_without_one(monkeypatch):
    model = _model()
    filter_fn = model.model.layers[0].mixer.filter_fn
    builds = []
    build = filter_fn._filter
    monkeypatch.setattr(filter_fn, "_filter", lambda length: builds.append(length) or build(length))
    ids = _ids(1, 20)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :9], past_key_values=cache, use_cache=True)
        for t in range(9, 20):
            model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        assert builds == [16, 32]  # power-of-two spans, sliced per call
        before = model(ids).logits
        filter_fn.implicit_filter[2].weight.data.mul_(1.5)  # no version bump: nothing may key on one
        after = model(ids).logits
    assert (after - before).abs().max() > 1e-6
    torch.testing.assert_close(after, model(ids).logits.detach(), **TOL)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"hyena_order": 1}, "hyena_order=1: a Hyena filter order below 2"),
        ({"hyena_order": 0}, "hyena_order=0 must be a positive integer"),
        ({"hyena_filter_emb_dim": 8}, "hyena_filter_emb_dim=8 must be odd and >= 3"),
        ({"hyena_filter_emb_dim": 1}, "hyena_filter_emb_dim=1 must be odd and >= 3"),
        ({"hyena_filter_order": 0}, "hyena_filter_order=0 must be a positive integer"),
        ({"hyena_short_conv_size": 1}, "hyena_short_conv_size=1 must be an integer >= 2"),
        ({"hyena_max_len": -4}, "hyena_max_len=-4 must be a positive integer"),
        ({"hyena_filter_sine_freq": 0.0}, "hyena_filter_sine_freq=0.0 must be a positive number"),
        ({"hyena_mode": "cuda"}, "hyena_mode='cuda' is unknown"),
    ],
)
def test_bad_hyena_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        _config(**fields)


def test_save_and_load_give_identical_logits(tmp_path):
    model = _model().float()
    model.save_pretrained(tmp_path)
    loaded = LlmArchHybridForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(2, 17)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert loaded.model.layers[1].mixer.filter_fn.implicit_filter[5].freq.abs().sum() > 0


def test_parameter_count_formula():
    """Per layer: matmul weights (N+2) d^2 in in_proj/out_proj, per token; the filter MLP's
    E F + 2 F^2 + F (N-1) d run over positions; the rest are biases, the short conv and sines."""
    d, N, F, E, K = 32, 3, 16, 5, 4
    model = _model(hyena_order=N, hyena_filter_order=F, hyena_filter_emb_dim=E, hyena_short_conv_size=K)
    mixer = model.model.layers[0].mixer
    projections = (N + 2) * d * d + (N + 2) * d
    short_conv = (N + 1) * d * (K + 1)
    filter_mlp = E * F + 2 * F * F + F * (N - 1) * d + 3 * F + 3 * F  # weights, biases, sine frequencies
    assert sum(p.numel() for p in mixer.parameters()) == projections + short_conv + filter_mlp + (N - 1) * d
    assert mixer.filter_fn.implicit_filter[1].freq.eq(14.0).all() and mixer.filter_fn.bias.std() > 0.5  # safari's init
