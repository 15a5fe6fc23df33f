"""`llmarch bench`: speed and memory of our models against transformers' own implementations.

Suites (each compares models built in the same process, timed interleaved A B A B ... so that
machine noise hits every model alike; every reported number is the median over repeats):

* dense:    `llmarch_dense` vs `LlamaForCausalLM` with identical weights: forward+backward
            tokens/s, greedy `generate` tokens/s, peak memory of each.
* overhead: the same pair at a tiny width: aten ops and host time per step.
* hybrid:   a retention/attention hybrid vs a dense model vs a retention-only model of the same
            width and depth: forward+backward tokens/s and per-token decode time at several contexts.
* moe:      the block: our `MoEFeedForward` vs transformers' `MixtralSparseMoeBlock` (eager and
            grouped_mm experts) and `Qwen3MoeSparseMoeBlock` (its default experts path), same
            weights: forward+backward tokens/s and peak memory (`moe`); the model: `llmarch_moe`
            converted from a `MixtralForCausalLM` with `from_hf`: training tokens/s (LM loss plus
            load-balancing loss), greedy `generate` tokens/s and peak memory (`moe_model`).
* ssm:      `llmarch_ssm` converted with `from_hf` from random `MambaForCausalLM` / `Mamba2ForCausalLM`
            (and `JambaForCausalLM` once `from_hf` takes it; skipped with the reason until then), same
            weights: forward+backward tokens/s and peak memory; per-token decode latency of our mamba
            and mamba2 and a dense model of the same width, depth and parameters at 1k/4k/16k contexts
            (`ssm_decode`), and our mamba's decode vs MambaForCausalLM's; `--plot PATH` saves the latencies.
* mla:      `llmarch_deepseek` converted with `from_hf` from a random `DeepseekV3ForCausalLM`, same weights:
            decode ms/token and tokens/s at 1k/4k/8k contexts (`mla_decode`; ours absorbs kv_b_proj, transformers
            re-expands the cache every step), the cache bytes each holds beside the accounting's, peak memory of
            the decode steps; the survey's "93% (213.5 GB -> 7.6 GB)" claim recomputed from our accounting for V2
            against DeepSeek 67B and for V3; `--plot PATH` saves the latencies.

* linear:   `llmarch_hybrid` converted with `from_hf` from random `RwkvForCausalLM` / `Qwen3NextForCausalLM`,
            same weights: forward+backward tokens/s and peak memory (shared with ssm in `pairs`); per-token
            decode latency at the ssm contexts of our rwkv4, rwkv7, deltanet, gated_deltanet, linear_attn
            (constant state: flat within 10%) and hyena (its history grows); `--plot PATH` saves the latencies.
* mtp:      multi-token prediction: a tiny DeepSeek-V3-shaped model with one MTP module, trained on
            the embedded corpus, decodes held-out prompts greedily and with `mtp_generate`
            (self-speculative): identical tokens first, then the drafts' acceptance rate, main-model
            forwards per token and tokens/s of each.
* recall:   multi-query associative recall (Zoology's MQAR): a 2-layer `({mixer}/mlp)x2` of one width per
            `--mixers` entry, trained on MQAR, then held-out accuracy per number of key-value pairs beside
            the bytes a layer caches; the survey's "Gated DeltaNet beats Mamba-2 on recall" against the
            measured means; `--plot PATH` saves accuracy vs pairs. Accuracy, not speed: no parity gate.
* topology: `llmarch_encoder` converted with `from_hf` from a random `BertModel` (forward tokens/s without
            grad, peak memory) and `llmarch_seq2seq` from random `T5ForConditionalGeneration` /
            `BartForConditionalGeneration` (greedy `generate` tokens/s, peak memory; T5 also forward+backward
            tokens/s), same weights; parity: hidden states at real positions, logits, greedy tokens.

A suite that compares ours with a transformers model reports a speed only once parity holds (fp32
logits within tolerance and equal greedy tokens; for the moe block, outputs and input gradients;
the moe suite checks block and model before timing either): otherwise
it fails, says which check failed by how much, and `run` returns 1. Peak memory: see `harness`.
Speed is measured here, never in unit tests. One module per suite (moe: `moe` and `moe_model`; ssm: `ssm` and `ssm_decode`; mla: `mla` and `mla_decode`; ssm and linear race converted pairs through `pairs`); `harness` times and measures,
`report` formats, `settings` holds the flags.
"""

import argparse
import datetime
import json
import os
import platform

import torch
import transformers

from ..console import show_on_console
from .dense import bench_dense
from .harness import log
from .hybrid import bench_hybrid
from .linear import bench_linear
from .mla import bench_mla
from .moe import bench_moe
from .mtp import bench_mtp
from .overhead import bench_overhead
from .recall import bench_recall
from .report import format_markdown, format_table
from .settings import SUITES, add_arguments, resolve_settings
from .ssm import bench_ssm
from .topology import bench_topology

SUITE_FNS = {
    "dense": bench_dense, "overhead": bench_overhead, "hybrid": bench_hybrid, "moe": bench_moe, "ssm": bench_ssm,
    "mla": bench_mla, "mtp": bench_mtp, "linear": bench_linear, "recall": bench_recall, "topology": bench_topology,
}

__all__ = ["SUITES", "SUITE_FNS", "add_arguments", "format_markdown", "format_table", "main", "run"]


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
    """Run the chosen suites; 0 unless a suite failed its parity check (goals MISSed are reported,
    not fatal). Each failure also goes to stderr as one line naming the suite and the check."""
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
    failed = {name: res for name, res in results["suites"].items() if res["status"] == "failed"}
    for name, res in failed.items():
        log.error(f"llmarch bench: {name} failed: {res['reason']}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="llmarch bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
