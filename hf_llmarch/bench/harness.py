"""What every suite shares: interleaved timing, op counting, peak memory, and the parity gate.

Peak memory is the growth during one measurement above the resident weights and inputs. On CUDA:
`torch.cuda.max_memory_allocated` minus the allocation before it. On CPU: peak RSS (`VmHWM`,
reset through `/proc/self/clear_refs`) minus RSS before it, in a fresh process per (model,
measurement) forked from a forkserver, so no allocator cache left by an earlier measurement hides
the peak (Linux only; elsewhere reported as n/a).
"""

import gc
import logging
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .report import fmt

# Ours and the reference must agree this closely (fp32) before any speed is compared.
PARITY_TOL = 1e-4

# Progress and tables go through this logger; `run` shows it on the console.
log = logging.getLogger("hf_llmarch.bench")


def parity_gate(suite: str, res: dict, failures: list[str]) -> dict | None:
    """Logs `res["parity"]` before any timing. Returns the suite's failed result if a check failed
    (ours computes something else, so its speed is not comparable), else None."""
    fields = ", ".join(f"{k}={fmt(v)}" for k, v in res["parity"].items() if k != "passed")
    log.info(f"[{suite}] parity {'FAILED' if failures else 'passed'}: {fields}")
    if not failures:
        return None
    return {**res, "status": "failed", "reason": "parity failed: " + "; ".join(failures) + "; no speed reported"}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(suite: str, what: str, fns: dict, repeats: int, device, rate=None) -> dict[str, list[float]]:
    """One untimed warm-up call per fn, then `repeats` rounds of A B C ...; seconds per call."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t = timed(fn, device)
            times[name].append(t)
            extra = f"  {rate(t)}" if rate else ""
            log.info(f"[{suite}] {what:<24} {name:<18} {r + 1}/{repeats} {t * 1e3:10.1f} ms{extra}")
    return times


@torch.no_grad()
def decode_step_times(model, state: dict, steps: int, device) -> list[float]:
    """`steps` greedy 1-token forwards continuing `state` ({"token", "cache", "cache_arg"}: the cache
    under the name the model's forward takes); seconds per step. Updates state["token"]."""
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        out = model(input_ids=state["token"], use_cache=True, **{state["cache_arg"]: state["cache"]})
        state["token"] = out.logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def train_step(model, input_ids) -> None:
    """Forward + backward without an optimizer; grads are freed after, so each step allocates them."""
    model.train()
    model(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)


def generate(model, prompt, new_tokens: int):
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


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it: on a GPU each non-view op is a kernel launch."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    with _OpCounter() as counter:
        fn()
    return counter.count


def cuda_peak(fn, device) -> int:
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


def rss_growth(fn) -> int:
    """Peak RSS growth of one call in bytes; meaningful only in a fresh process (see cpu_peaks)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - base) * 1024


def cpu_peaks(suite: str, jobs: list[dict], worker, preload: tuple[str, ...] = ()) -> list[int | None]:
    """`worker(job)` per job, each in its own process forked from a forkserver that has already
    imported us (and `preload`, if this process starts the forkserver); `worker` is a module-level
    function returning bytes (pickled by name)."""
    if not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)):
        log.info(f"[{suite}] peak RSS needs Linux /proc/self/clear_refs: memory reported as n/a")
        return [None] * len(jobs)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hf_llmarch.bench", "transformers.models.llama.modeling_llama", *preload])
    peaks = []
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        for job in jobs:
            peak = pool.submit(worker, job).result(timeout=1800)
            log.info(f"[{suite}] peak memory {job['what']:<12} {job['model']:<18} {peak / 2**20:10.1f} MiB")
            peaks.append(peak)
    return peaks
