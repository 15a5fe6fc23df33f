"""One config's figures together (`llmarch info`), and their human-readable table."""

import torch

from .params import count_parameters
from .usage import cache_bytes_per_token, flops_per_token


def summarize(config, context: int = 4096, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Everything above for one config, JSON-serialisable."""
    return {
        "model_type": config.model_type,
        "layer_pattern": config.layer_pattern,
        "num_hidden_layers": config.num_hidden_layers,
        "layer_types": {t: config.layer_types.count(t) for t in dict.fromkeys(config.layer_types)},
        "context": context,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": count_parameters(config),
        "flops": flops_per_token(config, context),
        "cache": cache_bytes_per_token(config, context, dtype),
    }


def _human(n: float, units=("", "K", "M", "B", "T"), base: int = 1000) -> str:
    for unit in units[:-1]:
        if abs(n) < base:
            return f"{n:.4g}{unit}" if unit else f"{n:.4g}"
        n /= base
    return f"{n:.4g}{units[-1]}"


def _human_bytes(n: float) -> str:
    return _human(n, units=(" B", " KiB", " MiB", " GiB", " TiB"), base=1024)


def format_summary(summary: dict) -> str:
    """A readable table of `summarize()`'s figures."""
    params, flops, cache = summary["parameters"], summary["flops"], summary["cache"]
    ctx = summary["context"]
    rows = [
        ("model_type", summary["model_type"]),
        ("layer pattern", summary["layer_pattern"]),
        ("layers", ", ".join(f"{n} {t}" for t, n in summary["layer_types"].items())),
        ("parameters", f"{_human(params['total'])} ({params['total']:,}) of {params['counted_model']}"),
        ("active parameters", f"{_human(params['active'])} ({params['active']:,})"),
        ("  embeddings / lm_head", f"{_human(params['embeddings'])} / {_human(params['lm_head'])}"),
        *((f"  mixer {name}", _human(n)) for name, n in params["mixers"].items()),
        ("  dense FFN", _human(params["dense_ffn"])),
        ("  MoE experts (active)", f"{_human(params['moe_experts'])} ({_human(params['moe_experts_active'])})"),
        *((("  MoE shared experts", _human(params["moe_shared"])),) if params["moe_shared"] else ()),
        ("  router / norms", f"{_human(params['router'])} / {_human(params['norms'])}"),
        *((f"  {name.replace('_', ' ')}", _human(n)) for name, n in params["heads"].items() if n),
        *((("  MTP modules (not active)", _human(params["mtp"])),) if params["mtp"] else ()),
        (f"FLOPs/token @ {ctx}", f"{_human(flops['forward'])} forward, {_human(flops['training'])} training"),
        *(_cache_rows(cache, ctx) if cache["cached"] else (("cache", "no cache (encoder)"),)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _cache_rows(cache: dict, ctx: int) -> list[tuple[str, str]]:
    """The cache figures of a stack that keeps one (every decoder)."""
    return [
        (f"cache @ {ctx} ({cache['dtype']})", f"{_human_bytes(cache['total_bytes'])} per sequence"),
        ("cache/token", f"{_human_bytes(cache['bytes_per_token'])} ({cache['bytes_per_token']:,.0f} B)"),
        *(
            (("  full K/V of the same heads", f"{cache['mha_equivalent_bytes_per_token']:,} B/token (MLA caches the latent)"),)
            if "mha_equivalent_bytes_per_token" in cache else ()
        ),
        *(
            (f"  {t} x{e['layers']}", f"{_human_bytes(e['total_bytes'])}{' (constant)' if e['constant_in_context'] else ''}")
            for t, e in cache["by_layer_type"].items()
        ),
    ]
