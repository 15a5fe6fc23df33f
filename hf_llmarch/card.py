"""Model cards: fill `templates/model_card.md` from a config and measured numbers."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from string import Template

DEFAULT_LIMITATIONS = (
    "This is a small demonstration model: it was trained briefly on a small corpus, so its text\n"
    "only imitates the style of that corpus. It has no factual knowledge, no instruction or\n"
    "safety tuning, and is not suitable for any real use."
)
_MISSING = "n/a"
METRIC_KEYS = (
    *("num_parameters", "training_data", "steps", "eval_loss_before", "eval_loss_after", "train_time_s"),
    *("lora_steps", "lora_data", "lora_loss_before", "lora_loss_after", "lora_adapter", "model_path"),
    "limitations",
)


def _template() -> Template:
    text = resources.files("hf_llmarch").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    return Template(text)


def _parameter_count(config, metrics: dict) -> int | None:
    # The accounting module is the source of truth when present; a measured count is the fallback.
    try:
        from .accounting import count_parameters

        return int(count_parameters(config)["total"])
    except (ImportError, AttributeError, KeyError, NotImplementedError):
        return metrics.get("num_parameters")


def format_count(n: int | None) -> str:
    """12345678 -> '12.35M (12,345,678)'."""
    if n is None:
        return _MISSING
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n:,})"
    return f"{n:,}"


def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return _MISSING
    return format(value, spec) if isinstance(value, float) else str(value)


def _perplexity(loss: float | None) -> str:
    if loss is None:
        return _MISSING
    return f"{math.exp(loss):.2f}" if loss < 50 else "inf"


def _lora_summary(metrics: dict) -> str:
    steps = metrics.get("lora_steps")
    if not steps:
        return "none"
    data = metrics.get("lora_data", "a separate slice")
    before, after = _fmt(metrics.get("lora_loss_before")), _fmt(metrics.get("lora_loss_after"))
    adapter = metrics.get("lora_adapter")  # saved beside the model; without it, merged into it
    where = "adapters merged into the weights"
    if adapter:
        where = f"adapter saved in `{adapter}` (`PeftModel.from_pretrained`)"
    return f"{steps} steps on {data}, eval loss {before} → {after}, {where}"


def render_card(config, metrics: dict, *, title: str, notes: str = "") -> str:
    """The Markdown model card for `config`, filled with `metrics`.

    Metric keys (all optional) are METRIC_KEYS; any other key raises rather than vanish.
    """
    check_metric_keys(metrics, source="metrics")
    heads = getattr(config, "num_attention_heads", None)
    train_time = metrics.get("train_time_s")
    fields = {
        "title": title,
        "model_type": config.model_type,
        "layer_pattern": getattr(config, "layer_pattern", None) or _MISSING,
        "num_layers": _fmt(getattr(config, "num_hidden_layers", None)),
        "hidden_size": _fmt(getattr(config, "hidden_size", None)),
        "num_heads": _fmt(heads),
        "num_kv_heads": _fmt(getattr(config, "num_key_value_heads", None) or heads),
        "position_embedding": _fmt(getattr(config, "position_embedding_type", None)),
        "vocab_size": _fmt(getattr(config, "vocab_size", None)),
        "param_count": format_count(_parameter_count(config, metrics)),
        "training_data": metrics.get("training_data", _MISSING),
        "steps": _fmt(metrics.get("steps")),
        "initial_loss": _fmt(metrics.get("eval_loss_before")),
        "final_loss": _fmt(metrics.get("eval_loss_after")),
        "initial_perplexity": _perplexity(metrics.get("eval_loss_before")),
        "final_perplexity": _perplexity(metrics.get("eval_loss_after")),
        "lora_summary": _lora_summary(metrics),
        "train_time": f"{train_time:.0f} s" if train_time is not None else _MISSING,
        "model_path": metrics.get("model_path", "path/to/model"),
        "limitations": metrics.get("limitations", DEFAULT_LIMITATIONS),
        "notes": f"\n## Notes\n\n{notes.strip()}\n" if notes.strip() else "",
    }
    return _template().substitute(fields)


def write_card(path: str | Path, text: str) -> Path:
    """Write `text` to `path` (creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check_metric_keys(metrics: dict, source: str) -> None:
    unknown = sorted(set(metrics) - set(METRIC_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown model-card metric(s) {unknown}; known: {', '.join(METRIC_KEYS)}")


def load_metrics(path: str | Path) -> dict:
    """A JSON object of METRIC_KEYS (e.g. written by hand or by a training script)."""
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must hold a JSON object of metrics, not {type(metrics).__name__}")
    check_metric_keys(metrics, source=str(path))
    return metrics
