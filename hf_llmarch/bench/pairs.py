"""Suites that race our model, converted with `from_hf`, against the random native transformers model
it came from (same weights): building the pairs, the parity gate, and the forward+backward tokens/s
and peak memory of each pair. A suite names its references as (name, builder of a native model from
the settings) and registers them here, so the forked memory workers can rebuild a pair."""

import torch

from .dense import dense_parity
from .harness import cpu_peaks, cuda_peak, interleave, median, rss_growth, train_step
from .report import metric
from .settings import DTYPES

REFERENCES: dict[str, dict] = {}  # suite -> {reference name: native model builder}


def register_references(suite: str, references: tuple) -> None:
    REFERENCES[suite] = dict(references)


def build_pair(s, suite: str, ref: str) -> dict:
    """{"ours": from_hf(native), "transformers": native}, fp32 on CPU, identical weights (seed 0).
    Raises from_hf's ValueError when it does not convert this model type."""
    from ..convert import from_hf

    torch.manual_seed(0)
    native = REFERENCES[suite][ref](s)
    return {"ours": from_hf(native), "transformers": native}


def build_pairs(s, suite: str, device) -> tuple[dict, dict]:
    """({ref: pair on `device`}, {ref: why it is skipped})."""
    pairs, skipped = {}, {}
    for ref in REFERENCES[suite]:
        try:
            pairs[ref] = {n: m.to(device) for n, m in build_pair(s, suite, ref).items()}
        except ValueError as err:  # from_hf does not take this model type (yet)
            skipped[ref] = f"from_hf: {err}"
    return pairs, skipped


def pairs_parity(pairs: dict, s, device, tol: float) -> tuple[dict, list[str]]:
    """The dense suite's check per pair; fields and failures named by the reference."""
    fields, failures = {}, []
    for ref, pair in pairs.items():
        parity, failed = dense_parity(pair["ours"], pair["transformers"], s, device, tol=tol)
        fields[f"max_abs_logit_diff[{ref}]"] = parity["max_abs_logit_diff"]
        fields[f"greedy_tokens_differing[{ref}]"] = parity["greedy_tokens_differing"]
        failures += [f"{ref} {f}" for f in failed]
    return {**fields, "tolerance": tol, "passed": not failures}, failures


def train_call(model, s, device):
    """One forward + backward of the LM loss on batch 1 x `ssm_seq` tokens."""
    ids = torch.randint(3, s.vocab, (1, s.ssm_seq), generator=torch.Generator().manual_seed(1)).to(device)
    return lambda: train_step(model, ids)


def cpu_train_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one pair, measure one model's train step peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_pair(settings, job["suite"], job["ref"])[job["model"]].to(DTYPES[settings.dtype])
    return rss_growth(train_call(model, settings, torch.device("cpu")))


def _train_memory(suite: str, s, pairs: dict, device, preload: tuple[str, ...]) -> dict:
    """{ref: {"ours"|"transformers": peak bytes of one train step, or None}}."""
    if s.no_memory:
        return {ref: dict.fromkeys(pair) for ref, pair in pairs.items()}
    jobs = [
        {"settings": s, "suite": suite, "ref": ref, "model": m, "what": f"train/{ref[:6]}"} for ref in pairs for m in pairs[ref]
    ]
    if device.type == "cuda":
        peaks = [cuda_peak(train_call(pairs[j["ref"]][j["model"]], s, device), device) for j in jobs]
    else:
        peaks = cpu_peaks(suite, jobs, cpu_train_peak_worker, preload)
    out = {ref: {} for ref in pairs}
    for job, peak in zip(jobs, peaks):
        out[job["ref"]][job["model"]] = peak
    return out


def train_metrics(suite: str, s, pairs: dict, skipped: dict, device, goal, preload=()) -> tuple[dict, dict]:
    """Per reference: train tokens/s (against `goal`) and peak memory; a skipped reference gets an empty row."""
    metrics, times = {}, {}
    for ref, pair in pairs.items():
        fns = {n: train_call(m, s, device) for n, m in pair.items()}
        what = f"train vs {ref.removesuffix('ForCausalLM')}"
        times[ref] = interleave(suite, what, fns, s.repeats, device, lambda t: f"{s.ssm_seq / t:,.0f} tok/s")
    peaks = _train_memory(suite, s, pairs, device, preload)
    cols = ("ours", "transformers")
    for ref in REFERENCES[suite]:
        speed = f"train tokens/s vs {ref}"
        if ref in skipped:
            metrics[speed] = {**metric("tok/s", {}, cols, goal), "skipped": skipped[ref]}
            continue
        tps = {n: s.ssm_seq / median(t) for n, t in times[ref].items()}
        mib = {n: None if b is None else b / 2**20 for n, b in peaks[ref].items()}
        metrics[speed] = metric("tok/s", tps, cols, goal)
        metrics[f"train peak memory vs {ref}"] = metric("MiB", mib, cols)
    return metrics, {"train_s": times, "train_peak_bytes": peaks}
