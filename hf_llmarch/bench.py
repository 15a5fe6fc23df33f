"""`llmarch bench`: speed and memory of our models against transformers' own implementations.

Suites (each compares models built in the same process, timed interleaved A B A B ... so that
machine noise hits every model alike; every reported number is the median over repeats):

* dense:  `llmarch_dense` vs `LlamaForCausalLM` with identical weights (logit parity checked first):
          forward+backward tokens/s, greedy `generate` tokens/s, peak memory of each.
* hybrid: a retention/attention hybrid vs a dense model vs a retention-only model of the same
          width and depth: forward+backward tokens/s and per-token decode time at several contexts.
* moe:    our `MoEFeedForward` vs transformers' `MixtralSparseMoeBlock` (same weights, outputs and
          input gradients checked first): forward+backward tokens/s.

Peak memory is the growth during one measurement above the resident weights and inputs. On CUDA:
`torch.cuda.max_memory_allocated` minus the allocation before it. On CPU: peak RSS (`VmHWM`,
reset through `/proc/self/clear_refs`) minus RSS before it, in a fresh process per (model,
measurement) forked from a forkserver, so no allocator cache left by an earlier measurement hides
the peak (Linux only; elsewhere reported as n/a). Speed is measured here, never in unit tests.
"""

import argparse
import datetime
import gc
import importlib.util
import json
import logging
import multiprocessing
import operator
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from .console import show_on_console

SUITES = ("dense", "overhead", "hybrid", "moe")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOAL_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}
DENSE_SPEED_GOAL = (">=", 0.95)  # ours within 5% of transformers
DENSE_MEMORY_GOAL = ("<=", 1.05)
HYBRID_DECODE_GOAL = ("<=", 1.0)  # hybrid no slower than dense at the longest context
FLAT_DECODE_GOAL = ("<", 1.10)  # retention decode at the longest vs the shortest context
MOE_SPEED_GOAL = (">=", 1.0)
OVERHEAD_OPS_GOAL = ("<=", 1.0)  # op counts are exact: never more launches than transformers
OVERHEAD_TIME_GOAL = ("<=", 1.05)  # host time repeats only to a few % on a shared CPU
OVERHEAD_SHAPE = dict(hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, batch=1)  # kernels cost ~nothing
PARITY_TOL = 1e-4

# Per-device defaults as (cpu, cuda); explicit flags win, then --quick, then these.
DEVICE_DEFAULTS = {
    "batch": (2, 8),
    "seq": (256, 1024),
    "prompt": (32, 128),
    "new_tokens": (32, 128),
    "repeats": (5, 10),
    "decode_steps": (16, 64),
    "moe_tokens": (4096, 16384),
}
SHAPE_FLAGS = ("hidden", "layers", "heads", "kv-heads", "vocab", "intermediate", "moe-intermediate", "experts", "top-k")
SHAPE_DEFAULTS = {
    "hidden": 512,
    "layers": 8,
    "heads": 8,
    "kv_heads": 4,
    "vocab": 32000,
    "intermediate": 1408,
    "moe_intermediate": 1024,
    "experts": 8,
    "top_k": 2,
    "contexts": "256,1024,4096",
}
QUICK = {
    **dict(batch=1, seq=16, prompt=8, new_tokens=4, repeats=1, decode_steps=2, moe_tokens=64, contexts="16,32"),
    **dict(hidden=64, layers=2, heads=4, kv_heads=2, vocab=256, intermediate=128, moe_intermediate=64, experts=4),
}
DENSE_SETUP = ("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "batch", "seq", "prompt", "new_tokens", "attn")
HYBRID_SETUP = (
    *("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "experts", "top_k"),
    *("contexts", "decode_steps", "decode_batch", "hybrid_pattern"),
)
MOE_SETUP = ("moe_tokens", "hidden", "moe_intermediate", "experts", "top_k")


# Progress and tables go through this logger; `run` shows it on the console.
log = logging.getLogger("hf_llmarch.bench")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llmarch bench` flags; every shape flag defaults per device (see DEVICE_DEFAULTS)."""
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="dense")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument(
        "--attn", choices=ATTN_IMPLEMENTATIONS, default="sdpa",
        help="attention implementation for every compared model (flash_attention_2 needs flash-attn and a GPU)",
    )
    parser.add_argument("--batch", type=int, help="batch of the dense suite (train and generate)")
    parser.add_argument("--seq", type=int, help="sequence length of the dense train step")
    parser.add_argument("--repeats", type=int, help="timed repeats per model (median reported)")
    parser.add_argument("--prompt", type=int, help="prompt length of the dense generate")
    parser.add_argument("--new-tokens", type=int, help="tokens generated by the dense generate")
    parser.add_argument("--contexts", help="hybrid suite contexts, comma-separated (default 256,1024,4096)")
    parser.add_argument("--decode-steps", type=int, help="hybrid suite: timed 1-token steps per repeat")
    parser.add_argument("--decode-batch", type=int, default=1, help="hybrid suite: sequences decoded at once")
    parser.add_argument("--hybrid-pattern", help="default: (retention/moe attn/mlp)x{layers/2}")
    parser.add_argument("--moe-tokens", type=int, help="tokens per MoE forward+backward")
    for flag in SHAPE_FLAGS:
        default = SHAPE_DEFAULTS[flag.replace("-", "_")]
        parser.add_argument(f"--{flag}", type=int, help=f"model shape (default {default})")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    parser.add_argument("--markdown", action="store_true", help="also print markdown tables for docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 1 repeat (tests the tooling only)")


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every unset shape flag from --quick or the device defaults."""
    s = argparse.Namespace(**vars(args))
    if s.device is None:
        s.device = "cuda" if torch.cuda.is_available() else "cpu"
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("llmarch bench: --device cuda was asked for but CUDA is not available")
    on_cuda = s.device == "cuda"
    if s.attn == "flash_attention_2" and not (on_cuda and importlib.util.find_spec("flash_attn")):
        raise SystemExit("llmarch bench: --attn flash_attention_2 needs --device cuda and the flash-attn package")
    for key in (*DEVICE_DEFAULTS, *SHAPE_DEFAULTS):
        if getattr(s, key, None) is not None:
            continue
        if s.quick and key in QUICK:
            setattr(s, key, QUICK[key])
        else:
            setattr(s, key, DEVICE_DEFAULTS[key][on_cuda] if key in DEVICE_DEFAULTS else SHAPE_DEFAULTS[key])
    s.contexts = [int(c) for c in str(s.contexts).split(",")]
    if s.hybrid_pattern is None:
        if s.layers % 2:
            raise SystemExit(f"llmarch bench: --layers {s.layers} must be even for the default hybrid pattern")
        s.hybrid_pattern = f"(retention/moe attn/mlp)x{s.layers // 2}"
    return s


def _pick(s, keys) -> dict:
    return {k: getattr(s, k) for k in keys}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleave(suite: str, what: str, fns: dict, repeats: int, device, rate=None) -> dict[str, list[float]]:
    """One untimed warm-up call per fn, then `repeats` rounds of A B C ...; seconds per call."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t = _timed(fn, device)
            times[name].append(t)
            extra = f"  {rate(t)}" if rate else ""
            log.info(f"[{suite}] {what:<24} {name:<18} {r + 1}/{repeats} {t * 1e3:10.1f} ms{extra}")
    return times


def _train_step(model, input_ids) -> None:
    """Forward + backward without an optimizer; grads are freed after, so each step allocates them."""
    model.train()
    model(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)


def _generate(model, prompt, new_tokens: int):
    model.eval()
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        use_cache=True,
        pad_token_id=0,
    )


def _cuda_peak(fn, device) -> int:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _cpu_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one model, measure one call's peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = _build_dense(settings, job["model"], seed=0).to(DTYPES[settings.dtype])
    fn = _dense_calls(model, settings, torch.device("cpu"))[job["what"]]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - base) * 1024


def _cpu_peaks(suite: str, jobs: list[dict]) -> list[int | None]:
    """Each job in its own process forked from a forkserver that has already imported us."""
    if not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)):
        log.info(f"[{suite}] peak RSS needs Linux /proc/self/clear_refs: memory reported as n/a")
        return [None] * len(jobs)
    # By module name, not __name__: under `python -m hf_llmarch.bench` that is "__main__", which
    # the forkserver cannot preload, and every child would re-import torch and transformers.
    from hf_llmarch.bench import _cpu_peak_worker as worker

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hf_llmarch.bench", "transformers.models.llama.modeling_llama"])
    peaks = []
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        for job in jobs:
            peak = pool.submit(worker, job).result(timeout=1800)
            log.info(f"[{suite}] peak memory {job['what']:<12} {job['model']:<18} {peak / 2**20:10.1f} MiB")
            peaks.append(peak)
    return peaks


def _metric(unit: str, values: dict, ratio_of=None, goal=None, ratio=None) -> dict:
    """One table row. `ratio_of=(a, b)` divides values[a] by values[b]; or pass `ratio` and a label."""
    row = {"unit": unit, "values": values}
    if isinstance(ratio_of, tuple):
        a, b = ratio_of
        ratio = values[a] / values[b] if values.get(a) is not None and values.get(b) else None
        ratio_of = f"{a}/{b}"
    if ratio_of is not None:
        row["ratio"], row["ratio_of"] = ratio, ratio_of
    if goal is not None:
        op, threshold = goal
        row["goal"] = f"{op} {threshold}"
        row["pass"] = None if ratio is None else bool(GOAL_OPS[op](ratio, threshold))
    return row


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x and abs(x) < 1e-2:
            return f"{x:.2e}"
        return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return str(x)


def _table_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    cols = res["columns"]
    header = ["metric", *cols, "ratio", "ratio of", "goal", "status"]
    rows = []
    for name, m in res["metrics"].items():
        status = {True: "PASS", False: "MISS", None: "n/a"}[m.get("pass")] if "goal" in m else ""
        cells = [_fmt(m["values"].get(c)) if c in m["values"] else "" for c in cols]
        tail = [_fmt(m.get("ratio")), m.get("ratio_of", ""), m.get("goal", ""), status]
        rows.append([f"{name} ({m['unit']})", *cells, *tail])
    return header, rows


def format_table(suite: str, res: dict) -> str:
    lines = [f"== {suite}: {res.get('title', '')} =="]
    if res["status"] == "skipped":
        return "\n".join([*lines, f"SKIPPED: {res['reason']}"])
    if "parity" in res:
        lines.append("parity: " + ", ".join(f"{k}={_fmt(v)}" for k, v in res["parity"].items()))
    if res["status"] == "failed":
        return "\n".join([*lines, f"FAILED: {res['reason']}"])
    header, rows = _table_rows(res)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def format_markdown(suite: str, res: dict) -> str:
    lines = [f"### {suite}: {res.get('title', '')}", "", res.get("setup_text", ""), ""]
    if res["status"] != "ok":
        return "\n".join([*lines, f"*{res['status']}: {res['reason']}*", ""])
    if "parity" in res:
        lines += ["Parity: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in res["parity"].items()), ""]
    header, rows = _table_rows(res)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, ""])


def _dense_configs(s):
    """(LlamaConfig, LlmArchDenseConfig) of the same shape; weights map key for key."""
    from transformers import LlamaConfig

    from .models.dense import LlmArchDenseConfig

    common = dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    llama = LlamaConfig(**common, num_hidden_layers=s.layers, rms_norm_eps=1e-6)
    ours = LlmArchDenseConfig(**common, layer_pattern=f"(attn/mlp)x{s.layers}", norm_eps=1e-6)
    return llama, ours


def _build_dense(s, which: str, seed: int):
    from transformers import AutoModelForCausalLM

    llama_cfg, ours_cfg = _dense_configs(s)
    torch.manual_seed(seed)
    cfg = ours_cfg if which == "ours" else llama_cfg
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


def _dense_pair(s, device):
    """(ours, LlamaForCausalLM) on `device`, ours loaded with Llama's weights key for key."""
    ref = _build_dense(s, "transformers", seed=0).to(device)
    ours = _build_dense(s, "ours", seed=1).to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _dense_calls(model, s, device) -> dict:
    """The two measured calls on fixed random inputs."""
    gen = torch.Generator().manual_seed(1)
    train_ids = torch.randint(3, s.vocab, (s.batch, s.seq), generator=gen).to(device)
    prompt = torch.randint(3, s.vocab, (s.batch, s.prompt), generator=gen).to(device)
    return {"train": lambda: _train_step(model, train_ids), "decode": lambda: _generate(model, prompt, s.new_tokens)}


@torch.no_grad()
def _dense_parity(ours, ref, s, device) -> dict:
    """fp32 logits on a random batch, and the greedy continuations, must agree."""
    ids = torch.randint(3, s.vocab, (2, min(s.seq, 64)), device=device)
    ours.eval(), ref.eval()
    diff = (ours(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
    prompt = ids[:1, : s.prompt]
    same = torch.equal(_generate(ours, prompt, s.new_tokens), _generate(ref, prompt, s.new_tokens))
    return {
        "max_abs_logit_diff": diff,
        "tolerance": PARITY_TOL,
        "greedy_tokens_equal": same,
        "passed": diff <= PARITY_TOL,
    }


def _dense_memory(s, models: dict, device) -> dict[str, dict]:
    """{'train'|'decode': {model: peak bytes or None}}."""
    if s.no_memory:
        return {what: dict.fromkeys(models) for what in ("train", "decode")}
    jobs = [{"settings": s, "model": m, "what": w} for w in ("train", "decode") for m in models]
    if device.type == "cuda":
        peaks = [_cuda_peak(_dense_calls(models[j["model"]], s, device)[j["what"]], device) for j in jobs]
    else:
        peaks = _cpu_peaks("dense", jobs)
    out = {"train": {}, "decode": {}}
    for job, peak in zip(jobs, peaks):
        out[job["what"]][job["model"]] = peak
    return out


def bench_dense(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": f"llmarch_dense vs transformers LlamaForCausalLM (identical weights, {s.attn})"}
    res.update(columns=["ours", "transformers"], setup=_pick(s, DENSE_SETUP))
    res["setup_text"] = (
        f"hidden {s.hidden}, {s.layers} layers, {s.heads} heads / {s.kv_heads} kv heads, vocab {s.vocab}, "
        f"intermediate {s.intermediate}; train batch {s.batch} x seq {s.seq}; generate batch {s.batch}, "
        f"prompt {s.prompt}, {s.new_tokens} new tokens; {s.device}, {s.dtype}, median of {s.repeats}"
    )
    ours, ref = _dense_pair(s, device)
    res["parity"] = _dense_parity(ours, ref, s, device)
    if not res["parity"]["passed"]:
        return {**res, "status": "failed", "reason": "logits differ from LlamaForCausalLM: timings would be meaningless"}
    models = {"ours": ours.to(dtype), "transformers": ref.to(dtype)}
    calls = {name: _dense_calls(m, s, device) for name, m in models.items()}
    train_tokens, decode_tokens = s.batch * s.seq, s.batch * s.new_tokens
    train_fns, decode_fns = ({n: c[what] for n, c in calls.items()} for what in ("train", "decode"))
    train = _interleave("dense", "train fwd+bwd", train_fns, s.repeats, device, lambda t: f"{train_tokens / t:,.0f} tok/s")
    decode = _interleave("dense", "generate", decode_fns, s.repeats, device, lambda t: f"{decode_tokens / t:,.0f} tok/s")
    memory = _dense_memory(s, models, device)
    mib = {w: {n: None if b is None else b / 2**20 for n, b in peaks.items()} for w, peaks in memory.items()}
    train_tps = {n: train_tokens / _median(t) for n, t in train.items()}
    decode_tps = {n: decode_tokens / _median(t) for n, t in decode.items()}
    pair = ("ours", "transformers")
    res["metrics"] = {
        "train tokens/s": _metric("tok/s", train_tps, pair, DENSE_SPEED_GOAL),
        "decode tokens/s": _metric("tok/s", decode_tps, pair, DENSE_SPEED_GOAL),
        "train peak memory": _metric("MiB", mib["train"], pair, DENSE_MEMORY_GOAL),
        "decode peak memory": _metric("MiB", mib["decode"], pair, DENSE_MEMORY_GOAL),
    }
    res["raw"] = {"train_s": train, "decode_s": decode, "peak_bytes": memory}
    return {**res, "status": "ok"}


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it: on a GPU each non-view op is a kernel launch."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _count_ops(fn) -> int:
    with _OpCounter() as counter:
        fn()
    return counter.count


def _overhead_calls(model, s, device) -> dict:
    """One cached decode step after a prefill of `s.prompt` tokens, and one train step (1 x 32)."""
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, s.vocab, (1, s.prompt), generator=gen).to(device)
    train_ids = torch.randint(3, s.vocab, (1, 32), generator=gen).to(device)
    model.eval()
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values
    mask = torch.ones(1, s.prompt + 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def decode_step():  # counted once: the cache grows by the one token
        model.eval()
        model(input_ids=prompt[:, -1:], attention_mask=mask, past_key_values=cache, use_cache=True)

    return {"decode": decode_step, "train": lambda: _train_step(model, train_ids)}


def bench_overhead(s) -> dict:
    """Host-side cost per step at a shape where the kernels cost almost nothing: the regime of
    small-batch GPU decode, which is bound by op launches and Python, not by FLOPs."""
    t = argparse.Namespace(**{**vars(s), **OVERHEAD_SHAPE})
    device = torch.device(s.device)
    res = {"title": "host overhead per step: llmarch_dense vs LlamaForCausalLM at a tiny width"}
    res.update(columns=["ours", "transformers"], setup={**_pick(t, ("layers", "prompt", "new_tokens")), **OVERHEAD_SHAPE})
    res["setup_text"] = (
        f"hidden {t.hidden}, {t.layers} layers, {t.heads} heads / {t.kv_heads} kv heads, vocab {t.vocab}: kernels are "
        f"negligible, so this measures dispatch and Python. aten ops counted with a TorchDispatchMode; generate batch 1, "
        f"prompt {t.prompt}, {t.new_tokens} new tokens, {s.attn}, {s.device}, fp32, median of {s.repeats}"
    )
    ours, ref = _dense_pair(t, device)
    models = {"ours": ours, "transformers": ref}
    ops = {what: {n: _count_ops(_overhead_calls(m, t, device)[what]) for n, m in models.items()} for what in ("decode", "train")}
    decode_fns = {n: _dense_calls(m, t, device)["decode"] for n, m in models.items()}
    decode = _interleave("overhead", "generate", decode_fns, s.repeats, device)
    ms_per_token = {n: _median(times) * 1e3 / (t.batch * t.new_tokens) for n, times in decode.items()}
    pair = ("ours", "transformers")
    res["metrics"] = {
        "aten ops per decode step": _metric("ops", ops["decode"], pair, OVERHEAD_OPS_GOAL),
        "aten ops per train step": _metric("ops", ops["train"], pair, OVERHEAD_OPS_GOAL),
        "generate host time per token": _metric("ms", ms_per_token, pair, OVERHEAD_TIME_GOAL),
    }
    res["raw"] = {"decode_s": decode}
    return {**res, "status": "ok"}


def _hybrid_models(s, device, dtype) -> dict:
    """hybrid / dense / retention-only of one width and depth; MoE experts sized so the active
    FFN parameters per token match the dense MLP (top_k experts of intermediate/top_k)."""
    from .models.hybrid import LlmArchHybridConfig, LlmArchHybridForCausalLM

    patterns = {
        "hybrid": s.hybrid_pattern,
        "dense": f"(attn/mlp)x{s.layers}",
        "retention": f"(retention/mlp)x{s.layers}",
    }
    common = dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        moe_intermediate_size=max(1, s.intermediate // s.top_k),
        num_experts=s.experts,
        num_experts_per_tok=s.top_k,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=max(4096, max(s.contexts) + s.decode_steps * (s.repeats + 1)),
        attn_implementation=s.attn,
    )
    models = {}
    for i, (name, pattern) in enumerate(patterns.items()):
        torch.manual_seed(i)
        cfg = LlmArchHybridConfig(**common, layer_pattern=pattern)
        models[name] = LlmArchHybridForCausalLM(cfg).to(device=device, dtype=dtype)
    return models


@torch.no_grad()
def _prefill(model, s, context: int, device) -> dict:
    model.eval()
    ids = torch.randint(3, s.vocab, (s.decode_batch, context), device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return {"cache": out.past_key_values, "token": out.logits[:, -1:].argmax(-1)}


@torch.no_grad()
def _decode_steps(model, state: dict, steps: int, device) -> list[float]:
    """`steps` greedy 1-token forwards continuing `state`; seconds per step."""
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=state["token"], past_key_values=state["cache"], use_cache=True)
        state["token"] = out.logits[:, -1:].argmax(-1)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _hybrid_decode(s, models: dict, context: int, device) -> dict[str, float]:
    """Median seconds per decode step at `context`, steps interleaved model by model."""
    states = {name: _prefill(m, s, context, device) for name, m in models.items()}
    for name, m in models.items():
        _decode_steps(m, states[name], 1, device)  # warm-up
    times = {name: [] for name in models}
    for r in range(s.repeats):
        for name, m in models.items():
            steps = _decode_steps(m, states[name], s.decode_steps, device)
            times[name] += steps
            what = f"decode @{context}"
            log.info(f"[hybrid] {what:<24} {name:<18} {r + 1}/{s.repeats} {_median(steps) * 1e3:10.3f} ms/token")
    return {name: _median(t) for name, t in times.items()}


def _hybrid_context(s, models: dict, context: int, device, raw: dict) -> dict:
    """Train and decode rows at one context; fills raw['train_s'] and raw['decode_s_per_token']."""
    ids = torch.randint(3, s.vocab, (1, context), device=device)
    fns = {name: (lambda m=m: _train_step(m, ids)) for name, m in models.items()}
    train = raw["train_s"][context] = _interleave(
        "hybrid", f"train fwd+bwd @{context}", fns, s.repeats, device, lambda t: f"{context / t:,.0f} tok/s"
    )
    decode = raw["decode_s_per_token"][context] = _hybrid_decode(s, models, context, device)
    decode_goal = HYBRID_DECODE_GOAL if context == max(s.contexts) else None
    pair = ("hybrid", "dense")
    return {
        f"train tokens/s @{context}": _metric("tok/s", {n: context / _median(t) for n, t in train.items()}, pair),
        f"decode ms/token @{context}": _metric("ms", {n: t * 1e3 for n, t in decode.items()}, pair, decode_goal),
    }


def bench_hybrid(s) -> dict:
    from .mixers import MIXER_CLASSES

    res = {"title": "hybrid vs dense vs retention-only (same width and depth)"}
    res["columns"] = ["hybrid", "dense", "retention"]
    if "retention" not in MIXER_CLASSES:
        return {**res, "status": "skipped", "reason": "mixer 'retention' is not in hf_llmarch.mixers.MIXER_CLASSES yet"}
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res["setup"] = _pick(s, HYBRID_SETUP)
    res["setup_text"] = (
        f"hybrid `{s.hybrid_pattern}` vs `(attn/mlp)x{s.layers}` vs `(retention/mlp)x{s.layers}`; hidden {s.hidden}, "
        f"{s.heads} heads / {s.kv_heads} kv heads, vocab {s.vocab}, intermediate {s.intermediate}, MoE {s.experts} "
        f"experts top-{s.top_k} of {s.intermediate // s.top_k}; train batch 1 x context; decode batch {s.decode_batch}, "
        f"{s.decode_steps} steps x {s.repeats} repeats after a prefill; {s.device}, {s.dtype}"
    )
    models = _hybrid_models(s, device, dtype)
    metrics, raw = {}, {"train_s": {}, "decode_s_per_token": {}}
    for context in s.contexts:
        metrics.update(_hybrid_context(s, models, context, device, raw))
    lo, hi = min(s.contexts), max(s.contexts)
    flat = raw["decode_s_per_token"][hi]["retention"] / raw["decode_s_per_token"][lo]["retention"]
    metrics[f"retention decode @{hi} / @{lo}"] = _metric("x", {}, f"retention@{hi}/@{lo}", FLAT_DECODE_GOAL, flat)
    return {**res, "metrics": metrics, "raw": raw, "status": "ok"}


def _moe_blocks(s, device):
    """(ours, {name: mixtral block}) sharing router and expert weights, fp32 on `device`."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from .models.dense import LlmArchDenseConfig
    from .modules.moe import MoEFeedForward

    shape = dict(hidden_size=s.hidden, num_experts_per_tok=s.top_k)
    ours_cfg = LlmArchDenseConfig(
        **shape,
        num_attention_heads=1,
        moe_intermediate_size=s.moe_intermediate,
        num_experts=s.experts,
        layer_pattern="attn/moe",
    )
    torch.manual_seed(0)
    ours = MoEFeedForward(ours_cfg)
    ours.experts.reset_parameters(std=s.hidden**-0.5)
    refs = {}
    for impl in ("eager", "grouped_mm"):
        cfg = MixtralConfig(
            **shape, intermediate_size=s.moe_intermediate, num_local_experts=s.experts, router_jitter_noise=0.0
        )
        cfg._experts_implementation = impl  # a standalone block gets no default from PreTrainedModel
        block = MixtralSparseMoeBlock(cfg)
        block.gate.weight.data.copy_(ours.gate.weight.data)
        block.experts.gate_up_proj.data.copy_(ours.experts.gate_up_proj.data)
        block.experts.down_proj.data.copy_(ours.experts.down_proj.data)
        refs[f"mixtral-{impl}"] = block.to(device)
    return ours.to(device), refs


def _block_output(block, x):
    """Ours returns (out, aux_loss): the aux loss is computed in the timed forward but not trained on."""
    out = block(x)
    return out[0] if isinstance(out, tuple) else out


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _moe_parity(blocks: dict, s, device) -> dict:
    """Outputs and input gradients of every Mixtral variant against ours, fp32."""
    x = torch.randn(1, min(s.moe_tokens, 256), s.hidden, device=device)
    outs, grads = {}, {}
    for name, block in blocks.items():
        xi = x.clone().requires_grad_(True)
        outs[name] = _block_output(block, xi)
        outs[name].square().sum().backward()
        grads[name] = xi.grad
    refs = [n for n in blocks if n != "ours"]
    out_diff = max(_rel_diff(outs[n], outs["ours"]) for n in refs)
    grad_diff = max(_rel_diff(grads[n], grads["ours"]) for n in refs)
    return {
        "max_rel_output_diff": out_diff,
        "max_rel_input_grad_diff": grad_diff,
        "tolerance": PARITY_TOL,
        "passed": out_diff <= PARITY_TOL and grad_diff <= PARITY_TOL,
    }


def _moe_step(block, x, grad_out):
    """Forward + backward of the block output; weight and input grads are freed after each step."""
    xi = x.detach().requires_grad_(True)

    def step():
        _block_output(block, xi).backward(grad_out)
        block.zero_grad(set_to_none=True)
        xi.grad = None

    return step


def bench_moe(s) -> dict:
    res = {"title": "MoEFeedForward vs transformers MixtralSparseMoeBlock (same weights)"}
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    try:
        ours, refs = _moe_blocks(s, device)
    except ImportError as err:
        return {**res, "status": "skipped", "reason": f"MoE module not importable: {err}"}
    blocks = {"ours": ours, **refs}
    res.update(columns=list(blocks), setup=_pick(s, MOE_SETUP))
    res["setup_text"] = (
        f"{s.moe_tokens} tokens, hidden {s.hidden}, expert intermediate {s.moe_intermediate}, {s.experts} experts, "
        f"top-{s.top_k}; forward + backward of the block output (ours also computes its router losses); "
        f"{s.device}, {s.dtype}, median of {s.repeats}. mixtral-eager is the block's own loop, "
        "mixtral-grouped_mm the path transformers picks by default inside a model"
    )
    res["parity"] = _moe_parity(blocks, s, device)
    if not res["parity"]["passed"]:
        return {**res, "status": "failed", "reason": "outputs differ from MixtralSparseMoeBlock: timings would be meaningless"}
    x = torch.randn(1, s.moe_tokens, s.hidden, device=device, dtype=dtype)
    grad_out = torch.randn_like(x)
    steps = {name: _moe_step(block.to(dtype), x, grad_out) for name, block in blocks.items()}
    times = _interleave("moe", "fwd+bwd", steps, s.repeats, device, lambda t: f"{s.moe_tokens / t:,.0f} tok/s")
    tps = {n: s.moe_tokens / _median(t) for n, t in times.items()}
    res["metrics"] = {
        f"fwd+bwd tokens/s vs {ref}": _metric("tok/s", {"ours": tps["ours"], ref: tps[ref]}, ("ours", ref), MOE_SPEED_GOAL)
        for ref in refs
    }
    res["raw"] = {"fwd_bwd_s": times}
    return {**res, "status": "ok"}


SUITE_FNS = {"dense": bench_dense, "overhead": bench_overhead, "hybrid": bench_hybrid, "moe": bench_moe}


def _meta(s) -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": s.device,
        "device_name": torch.cuda.get_device_name() if s.device == "cuda" else cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": s.dtype,
        "quick": s.quick,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def run(args: argparse.Namespace) -> int:
    """Run the chosen suites; 0 unless a parity check failed (goals MISSed are reported, not fatal)."""
    show_on_console(log)
    s = resolve_settings(args)
    if s.threads:
        torch.set_num_threads(s.threads)
    settings = {k: v for k, v in vars(s).items() if k not in ("json", "markdown")}
    results = {"meta": _meta(s), "settings": settings, "suites": {}}
    log.info(f"llmarch bench on {results['meta']['device_name']} ({s.device}, {s.dtype}, {torch.get_num_threads()} threads)")
    for suite in SUITES if s.suite == "all" else (s.suite,):
        res = SUITE_FNS[suite](s)
        results["suites"][suite] = res
        log.info("\n" + format_table(suite, res) + "\n")
    if s.markdown:
        log.info("\n".join(format_markdown(name, res) for name, res in results["suites"].items()))
    if s.json:
        with open(s.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        log.info(f"results written to {s.json}")
    return 1 if any(r["status"] == "failed" for r in results["suites"].values()) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="llmarch bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
