"""ssm suite: our models converted with `from_hf` from random `MambaForCausalLM`,
`Mamba2ForCausalLM`, `JambaForCausalLM` and `FalconH1ForCausalLM` models, against those very
models (transformers' torch path, which is what runs without mamba_ssm). Parity of every pair first
(fp32 logits within SSM_PARITY_TOL and equal greedy tokens); only then forward+backward tokens/s and
peak memory of each pair, and the decode half (`ssm_decode`): per-token latency at several
contexts of our mamba and mamba2 next to a dense model of the same width, depth and about the same
parameter count, and our mamba's decode against MambaForCausalLM's at the shortest context."""

import torch

from .dense import dense_parity
from .harness import cpu_peaks, cuda_peak, interleave, log, median, parity_gate, rss_growth, train_step
from .report import metric
from .settings import DTYPES, pick
from .ssm_decode import bench_ssm_decode, dense_like

SSM_SPEED_GOAL = (">=", 1.0)
# Our scans sum in another order than transformers' sequential loop (chunks); at logit magnitudes
# of ~10 fp32 rounding reaches ~1e-4 (measured 1.4e-4 at hidden 512, 8 layers), so the gate is 1e-3.
SSM_PARITY_TOL = 1e-3
MAMBA2_HEAD_DIM = 64
SSM_PRELOAD = (
    "transformers.models.mamba.modeling_mamba",
    "transformers.models.mamba2.modeling_mamba2",
    "transformers.models.jamba.modeling_jamba",
    "transformers.models.falcon_h1.modeling_falcon_h1",
)
SSM_SETUP = (
    *("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "experts", "top_k", "attn"),
    *("ssm_seq", "ssm_contexts", "decode_steps", "prompt", "new_tokens", "repeats"),
)


def _mamba(s):
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(
        MambaConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, tie_word_embeddings=False)
    )


def _mamba2(s):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    head_dim = min(MAMBA2_HEAD_DIM, 2 * s.hidden)  # expand 2: heads x head_dim = 2 x hidden
    cfg = Mamba2Config(
        vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, head_dim=head_dim,
        num_heads=2 * s.hidden // head_dim, n_groups=1, tie_word_embeddings=False,
    )
    return Mamba2ForCausalLM(cfg)


def _jamba(s):
    """One attention layer in the middle, MoE on every other layer (Jamba's own periods, fit to depth)."""
    from transformers import AutoModelForCausalLM, JambaConfig

    cfg = JambaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, num_experts=s.experts,
        num_experts_per_tok=s.top_k, attn_layer_period=s.layers, attn_layer_offset=s.layers // 2,
        use_mamba_kernels=False, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


def _falcon_h1(s):
    """Attention beside Mamba-2 in every layer (our par(attn,mamba2)), with Falcon-H1-0.5B's muP multipliers."""
    from transformers import AutoModelForCausalLM, FalconH1Config

    head_dim = min(MAMBA2_HEAD_DIM, 2 * s.hidden)
    cfg = FalconH1Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, mamba_d_ssm=2 * s.hidden,
        mamba_n_heads=2 * s.hidden // head_dim, mamba_d_head=head_dim, tie_word_embeddings=False, **FALCON_H1_MUP,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


# Falcon-H1-0.5B's multipliers (tiiuae/Falcon-H1-0.5B-Base config.json), so the muP path is what is timed.
FALCON_H1_MUP = dict(
    embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625, key_multiplier=0.39062499999999994,
    attention_out_multiplier=0.9375, ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
    mlp_multipliers=[0.8838834764831844, 0.5859375],
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
)

# The training comparisons: (reference name, builder of a random native model of the suite's shape).
REFERENCES = (
    ("MambaForCausalLM", _mamba), ("Mamba2ForCausalLM", _mamba2), ("JambaForCausalLM", _jamba),
    ("FalconH1ForCausalLM", _falcon_h1),
)


def build_pair(s, ref: str) -> dict:
    """{"ours": from_hf(native), "transformers": native}, fp32 on CPU, identical weights (seed 0).
    Raises from_hf's ValueError when it does not convert this model type."""
    from ..convert import from_hf

    torch.manual_seed(0)
    native = dict(REFERENCES)[ref](s)
    return {"ours": from_hf(native), "transformers": native}


def _pairs(s, device) -> tuple[dict, dict]:
    """({ref: pair on `device`}, {ref: why it is skipped})."""
    pairs, skipped = {}, {}
    for ref, _ in REFERENCES:
        try:
            pairs[ref] = {n: m.to(device) for n, m in build_pair(s, ref).items()}
        except ValueError as err:  # from_hf does not take this model type (yet)
            skipped[ref] = f"from_hf: {err}"
    return pairs, skipped


def _parity(pairs: dict, s, device) -> tuple[dict, list[str]]:
    """The dense suite's check per pair; fields and failures named by the reference."""
    fields, failures = {}, []
    for ref, pair in pairs.items():
        parity, failed = dense_parity(pair["ours"], pair["transformers"], s, device, tol=SSM_PARITY_TOL)
        fields[f"max_abs_logit_diff[{ref}]"] = parity["max_abs_logit_diff"]
        fields[f"greedy_tokens_differing[{ref}]"] = parity["greedy_tokens_differing"]
        failures += [f"{ref} {f}" for f in failed]
    return {**fields, "tolerance": SSM_PARITY_TOL, "passed": not failures}, failures


def _train_call(model, s, device):
    ids = torch.randint(3, s.vocab, (1, s.ssm_seq), generator=torch.Generator().manual_seed(1)).to(device)
    return lambda: train_step(model, ids)


def cpu_train_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one pair, measure one model's train step peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_pair(settings, job["ref"])[job["model"]].to(DTYPES[settings.dtype])
    return rss_growth(_train_call(model, settings, torch.device("cpu")))


def _train_memory(s, pairs: dict, device) -> dict:
    """{ref: {"ours"|"transformers": peak bytes of one train step, or None}}."""
    if s.no_memory:
        return {ref: dict.fromkeys(pair) for ref, pair in pairs.items()}
    jobs = [{"settings": s, "ref": ref, "model": m, "what": f"train/{ref[:6]}"} for ref in pairs for m in pairs[ref]]
    if device.type == "cuda":
        peaks = [cuda_peak(_train_call(pairs[j["ref"]][j["model"]], s, device), device) for j in jobs]
    else:
        peaks = cpu_peaks("ssm", jobs, cpu_train_peak_worker, SSM_PRELOAD)
    out = {ref: {} for ref in pairs}
    for job, peak in zip(jobs, peaks):
        out[job["ref"]][job["model"]] = peak
    return out


def _train_metrics(s, pairs: dict, skipped: dict, device) -> tuple[dict, dict]:
    """Per reference: train tokens/s (goal) and peak memory; a skipped reference gets an empty row."""
    metrics, times = {}, {}
    for ref, pair in pairs.items():
        fns = {n: _train_call(m, s, device) for n, m in pair.items()}
        what = f"train vs {ref.removesuffix('ForCausalLM')}"
        times[ref] = interleave("ssm", what, fns, s.repeats, device, lambda t: f"{s.ssm_seq / t:,.0f} tok/s")
    peaks = _train_memory(s, pairs, device)
    cols = ("ours", "transformers")
    for ref, _ in REFERENCES:
        speed = f"train tokens/s vs {ref}"
        if ref in skipped:
            metrics[speed] = {**metric("tok/s", {}, cols, SSM_SPEED_GOAL), "skipped": skipped[ref]}
            continue
        tps = {n: s.ssm_seq / median(t) for n, t in times[ref].items()}
        mib = {n: None if b is None else b / 2**20 for n, b in peaks[ref].items()}
        metrics[speed] = metric("tok/s", tps, cols, SSM_SPEED_GOAL)
        metrics[f"train peak memory vs {ref}"] = metric("MiB", mib, cols)
    return metrics, {"train_s": times, "train_peak_bytes": peaks}


def bench_ssm(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": "state-space models vs transformers Mamba / Mamba-2 / Jamba / Falcon-H1 (same weights); decode vs a dense model"}
    res.update(columns=["ours", "transformers", "mamba", "mamba2", "dense"], setup=pick(s, SSM_SETUP))
    pairs, skipped = _pairs(s, device)
    res["parity"], failures = _parity(pairs, s, device)
    if failed := parity_gate("ssm", res, failures):
        return failed
    for ref, why in skipped.items():
        log.info(f"[ssm] {ref} skipped: {why}")
    pairs = {ref: {n: m.to(dtype) for n, m in pair.items()} for ref, pair in pairs.items()}
    metrics, raw = _train_metrics(s, pairs, skipped, device)
    decode_models = {"mamba": pairs["MambaForCausalLM"]["ours"], "mamba2": pairs["Mamba2ForCausalLM"]["ours"]}
    decode_models["dense"] = dense_like(s, decode_models["mamba"], device, dtype)
    decode_metrics, decode_raw, counts = bench_ssm_decode(s, decode_models, pairs["MambaForCausalLM"]["transformers"], device)
    res["setup_text"] = _setup_text(s, pairs, skipped, counts, decode_models["dense"].config.intermediate_size)
    return {**res, "metrics": metrics | decode_metrics, "raw": raw | decode_raw, "skipped": skipped, "status": "ok"}


def _setup_text(s, pairs: dict, skipped: dict, counts: dict, dense_intermediate: int) -> str:
    m1, m2 = (pairs[ref]["transformers"].config for ref in ("MambaForCausalLM", "Mamba2ForCausalLM"))
    params = ", ".join(f"{n} {c / 1e6:.2f}M" for n, c in counts.items())
    skips = "".join(f" {ref}: skipped ({why})." for ref, why in skipped.items())
    jamba = "" if "JambaForCausalLM" in skipped else (
        f" Jamba: one attention layer ({s.heads} heads / {s.kv_heads} kv heads) in the middle, {s.experts} experts "
        f"of {s.intermediate} top-{s.top_k} on every other layer."
    )
    falcon = "" if "FalconH1ForCausalLM" in skipped else (
        f" Falcon-H1: every layer attention ({s.heads} heads / {s.kv_heads} kv heads) beside Mamba-2 (d_ssm "
        f"{2 * s.hidden}), MLP {s.intermediate}, Falcon-H1-0.5B's muP multipliers."
    )
    return (
        f"hidden {s.hidden}, {s.layers} layers, vocab {s.vocab}, untied head; Mamba-1 state {m1.state_size}, expand "
        f"{m1.expand}; Mamba-2 "
        f"{m2.num_heads} heads of {m2.head_dim}, state {m2.state_size}, 1 group, chunk {m2.chunk_size}; ours from "
        f"`from_hf` of each. Train: batch 1 x seq {s.ssm_seq}, forward + backward of the LM loss, median of "
        f"{s.repeats}. Decode: batch 1, {s.decode_steps} one-token steps x {s.repeats} repeats after a prefill of each "
        f"context, median per token; dense = `(attn/mlp)x{s.layers}`, {s.heads} heads / {s.kv_heads} kv heads, "
        f"intermediate {dense_intermediate} (so its parameters match our mamba's); parameters: {params}. "
        f"{s.device}, {s.dtype}.{jamba}{falcon}{skips}"
    )
