"""One config's figures together (`llmarch info`), and their human-readable table."""

import torch

from .params import count_parameters, is_seq2seq
from .usage import cache_bytes_per_token, flops_per_token


def summarize(config, context: int = 4096, dtype: torch.dtype = torch.bfloat16, encoder_context: int | None = None) -> dict:
    """Everything above for one config, JSON-serialisable. For an encoder-decoder the layer fields
    are the decoder's, `encoder_*` the encoder's, and `encoder_context` (default `context`) the
    input tokens the decoder cross-attends to."""
    summary = {
        "model_type": config.model_type,
        "layer_pattern": config.layer_pattern,
        "num_hidden_layers": config.num_hidden_layers,
        "layer_types": _layer_type_counts(config),
        "context": context,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": count_parameters(config),
    }
    if is_seq2seq(config):
        encoder = config.stack_config(encoder=True)
        encoder_context = context if encoder_context is None else encoder_context
        summary |= {
            "encoder_layer_pattern": encoder.layer_pattern,
            "encoder_num_hidden_layers": encoder.num_hidden_layers,
            "encoder_layer_types": _layer_type_counts(encoder),
            "encoder_context": encoder_context,
        }
    extra = {"encoder_context": encoder_context} if is_seq2seq(config) else {}
    summary["flops"] = flops_per_token(config, context, **extra)
    summary["cache"] = cache_bytes_per_token(config, context, dtype, **extra)
    return summary


def _layer_type_counts(config) -> dict[str, int]:
    return {t: config.layer_types.count(t) for t in dict.fromkeys(config.layer_types)}


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
    ctx, seq2seq = summary["context"], "encoder_layer_types" in summary
    decoder = " (decoder)" if seq2seq else ""
    rows = [
        ("model_type", summary["model_type"]),
        *((("encoder layer pattern", summary["encoder_layer_pattern"]),) if seq2seq else ()),
        *((("encoder layers", _layer_list(summary["encoder_layer_types"])),) if seq2seq else ()),
        (f"layer pattern{decoder}", summary["layer_pattern"]),
        (f"layers{decoder}", _layer_list(summary["layer_types"])),
        ("parameters", f"{_human(params['total'])} ({params['total']:,}) of {params['counted_model']}"),
        ("active parameters", f"{_human(params['active'])} ({params['active']:,})"),
        ("  embeddings / lm_head", f"{_human(params['embeddings'])} / {_human(params['lm_head'])}"),
        *(
            (("  encoder / decoder stack", f"{_human(params['stacks']['encoder'])} / {_human(params['stacks']['decoder'])}"),)
            if "stacks" in params else ()
        ),
        *((f"  mixer {name}", _human(n)) for name, n in params["mixers"].items()),
        ("  dense FFN", _human(params["dense_ffn"])),
        ("  MoE experts (active)", f"{_human(params['moe_experts'])} ({_human(params['moe_experts_active'])})"),
        *((("  MoE shared experts", _human(params["moe_shared"])),) if params["moe_shared"] else ()),
        ("  router / norms", f"{_human(params['router'])} / {_human(params['norms'])}"),
        *((f"  {name.replace('_', ' ')}", _human(n)) for name, n in params["heads"].items() if n),
        *((("  MTP modules (not active)", _human(params["mtp"])),) if params["mtp"] else ()),
        *_flops_rows(flops, ctx),
        *(_cache_rows(cache, ctx) if cache["cached"] else (("cache", "no cache (encoder)"),)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _layer_list(layer_types: dict) -> str:
    return ", ".join(f"{n} {t}" for t, n in layer_types.items())


def _flops_rows(flops: dict, ctx: int) -> list[tuple[str, str]]:
    """FLOPs per token; an encoder-decoder's per decoder token (cross-attending to encoder_context
    encoder tokens) and per encoder token."""
    both = f"{_human(flops['forward'])} forward, {_human(flops['training'])} training"
    if "encoder" not in flops:
        return [(f"FLOPs/token @ {ctx}", both)]
    encoder, enc_ctx = flops["encoder"], flops["encoder_context"]
    return [
        (f"FLOPs/decoder token @ {ctx} (+{enc_ctx} encoder)", f"{both} (cross-attn scores {_human(flops['cross_attention'])})"),
        (f"FLOPs/encoder token @ {enc_ctx}", f"{_human(encoder['forward'])} forward, {_human(encoder['training'])} training"),
    ]


def _cache_rows(cache: dict, ctx: int) -> list[tuple[str, str]]:
    """The cache figures of a stack that keeps one (every decoder); an encoder-decoder's self-attention
    cache per decoder token and its cross-attention cache per encoder token."""
    cross = cache.get("cross_attention")
    if cross is not None:
        enc_ctx, per_enc = cross["encoder_context"], cross["bytes_per_encoder_token"]
        return [
            (
                f"cache @ {ctx} + {enc_ctx} encoder ({cache['dtype']})",
                f"{_human_bytes(cache['sequence_total_bytes'])} per sequence (self {_human_bytes(cache['total_bytes'])}"
                f" + cross {_human_bytes(cross['total_bytes'])})",
            ),
            ("  self KV per decoder token", f"{_human_bytes(cache['bytes_per_token'])} ({cache['bytes_per_token']:,.0f} B)"),
            ("  cross KV per encoder token", f"{_human_bytes(per_enc)} ({per_enc:,} B, x{cross['layers']} layers)"),
        ]
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
