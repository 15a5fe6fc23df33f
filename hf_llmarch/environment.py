"""What `llmarch env` reports: versions, optional kernels, and the path each op takes on this machine.

Op paths come from the functions the ops themselves call to choose (and, for attention, from
transformers' own checks), so this report cannot disagree with what runs.
"""

import importlib
import importlib.metadata
import importlib.util
import os
import platform

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

from . import __version__
from .compat import TESTED_TRANSFORMERS
from .configuration import LlmArchConfig
from .ops.moe import moe_path_label, pick_moe_impl, resolve_moe_impl
from .ops.moe.grouped import FEW_PAIRS
from .ops.delta_rule import resolve_delta_rule_mode
from .ops.dplr_delta import resolve_dplr_mode
from .ops.hyena import resolve_hyena_mode
from .ops.retention import resolve_retention_mode
from .ops.s4d import resolve_s4d_mode
from .ops.selective_scan import resolve_selective_scan_mode
from .ops.short_conv import resolve_short_conv_mode
from .ops.ssd import resolve_ssd_mode
from .ops.wkv4 import resolve_wkv4_mode

PACKAGES = ("peft", "accelerate", "trl", "triton", "safetensors")
KERNELS = ("flash_attn", "mamba_ssm", "causal_conv1d", "fla")
MOE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def collect() -> dict:
    """Everything `llmarch env` prints, as plain JSON-able values."""
    cuda = torch.cuda.is_available()
    return {
        "hf_llmarch": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "transformers": transformers.__version__,
        "transformers_tested": list(TESTED_TRANSFORMERS),
        "transformers_warning": _transformers_warning(),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "kernels": {name: _kernel_version(name) for name in KERNELS},
        "paths": {
            "attention": _attention_paths(),
            "retention": _retention_paths(),
            "moe": _moe_paths(),
            "state_space": _state_space_paths(),
        },
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("LLMARCH_")},
    }


def _transformers_warning() -> str | None:
    lo, hi = (Version(v) for v in TESTED_TRANSFORMERS)
    installed = Version(transformers.__version__)
    if lo <= Version(f"{installed.major}.{installed.minor}") <= hi:
        return None
    return f"transformers {installed} is outside the range hf_llmarch is tested on ({lo} to {hi})"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _kernel_version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(module), "__version__", "installed (no __version__)")
    except Exception as err:  # a kernel built against another torch/CUDA fails in many ways; report, don't crash
        return f"import failed: {type(err).__name__}: {err}"


def _attention_paths() -> dict:
    """Ask transformers, on a tiny hf_llmarch model built on the meta device (no memory used)."""
    from transformers import AutoModelForCausalLM

    from .models.dense import LlmArchDenseConfig

    config = LlmArchDenseConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=1
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        # The check from_pretrained(attn_implementation="flash_attention_2") runs before loading weights.
        model.get_correct_attn_implementation("flash_attention_2", is_init_check=True)
        flash = "usable"
    except (ValueError, ImportError) as err:
        flash = "not usable: " + (str(err).partition("following error: ")[2] or str(err))
    return {"default": model.config._attn_implementation, "flash_attention_2": flash}


def _retention_paths() -> dict:
    """The form `retention_mode="auto"` picks at a decode step, a chunk-sized and a longer prefill."""
    chunk = LlmArchConfig.retention_chunk_size
    try:
        picks = {f"T={t}": resolve_retention_mode("auto", t, chunk) for t in (1, chunk, chunk + 1)}
    except ValueError as err:  # a bad LLMARCH_RETENTION_MODE: the report is where the user should see it
        return {"auto": f"error: {err}"}
    return {"auto": picks, "retention_chunk_size": chunk}


def _state_space_paths() -> dict:
    """The path each state-space and linear-time op's "auto" takes for a prefill from a zero state and
    for a decode step, asked of the ops' own resolvers (the fused kernels need CUDA and their extra
    installed: mamba-ssm, causal-conv1d, fla-core)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prefill, step = (torch.zeros(1, t, 8, device=device) for t in (16, 1))
    resolvers = {
        "mamba": lambda x: resolve_selective_scan_mode("auto", x),
        "mamba2": lambda x: resolve_ssd_mode("auto", x[..., None]),
        "s4d": lambda x: resolve_s4d_mode("auto", seq_len=x.shape[1]),
        "short conv": lambda x: resolve_short_conv_mode("auto", x),
        "delta rule": lambda x: resolve_delta_rule_mode("auto", x),
        "rwkv7 dplr": lambda x: resolve_dplr_mode("auto", x),
        "rwkv4 wkv": lambda x: resolve_wkv4_mode("auto", x),
        "hyena long conv": lambda x: "cached-history dot product" if x.shape[1] == 1 else resolve_hyena_mode("auto"),
    }
    paths = {}
    for name, resolve in resolvers.items():
        try:
            paths[name] = {"prefill": resolve(prefill), "decode": resolve(step)}
        except ValueError as err:  # a bad LLMARCH_*_MODE: the report is where the user should see it
            paths[name] = {"error": str(err)}
    return paths


def _moe_paths() -> dict:
    """The experts path `moe_impl="auto"` takes for a prefill-sized call, per dtype, as the op's own
    picker decides it (on CUDA that may be Triton where grouped_mm cannot run)."""
    try:
        impl = resolve_moe_impl("auto")
    except ValueError as err:  # a bad LLMARCH_MOE_IMPL
        return {"auto": f"error: {err}"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = FEW_PAIRS + 1  # beyond the decode-sized per-pair path
    paths = {}
    for name, dtype in MOE_DTYPES.items():
        # Shapes aligned as grouped_mm needs (16-byte rows); misaligned model shapes fall back to slices.
        x, gate_up, down = (torch.zeros(s, device=device, dtype=dtype) for s in ((pairs, 16), (2, 32, 16), (2, 16, 16)))
        idx = torch.zeros(pairs, 1, dtype=torch.long, device=device)
        picked = pick_moe_impl("auto", x, idx, gate_up, down, F.silu)
        paths[name] = moe_path_label(picked, x, gate_up, down)
    return {"auto": impl, "device": device, "paths": paths}


def format_report(info: dict) -> str:
    """The aligned text block `llmarch env` prints."""
    paths = info["paths"]
    rows = [
        ("hf_llmarch", info["hf_llmarch"]),
        ("python", info["python"]),
        ("platform", info["platform"]),
        ("torch", f"{info['torch']} (CUDA build {info['torch_cuda'] or 'none'}, available: {info['cuda_available']})"),
        ("device", info["device"] or "cpu"),
        ("transformers", f"{info['transformers']} (tested: {' to '.join(info['transformers_tested'])})"),
        *info["packages"].items(),
        *((f"kernel {k}", v) for k, v in info["kernels"].items()),
        ("attention", f"{paths['attention']['default']} (flash_attention_2 {paths['attention']['flash_attention_2']})"),
        ("retention auto", _format_retention(paths["retention"])),
        ("moe auto", _format_moe(paths["moe"])),
        *((f"{name} auto", _format_state_space(picks)) for name, picks in paths["state_space"].items()),
        ("env", " ".join(f"{k}={v}" for k, v in info["env"].items()) or "no LLMARCH_* variables set"),
    ]
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    if info["transformers_warning"]:
        lines.append(f"warning: {info['transformers_warning']}")
    return "\n".join(lines)


def _format_retention(retention: dict) -> str:
    if isinstance(retention["auto"], str):
        return retention["auto"]
    picks = ", ".join(f"{t}: {mode}" for t, mode in retention["auto"].items())
    return f"{picks} (retention_chunk_size={retention['retention_chunk_size']})"


def _format_state_space(picks: dict) -> str:
    return picks.get("error") or f"prefill: {picks['prefill']}, decode: {picks['decode']}"


def _format_moe(moe: dict) -> str:
    if "paths" not in moe:
        return moe["auto"]
    return "; ".join(f"{dtype}: {path}" for dtype, path in moe["paths"].items())
