"""Named presets: JSON files in the top-level configs/ folder, shipped in the wheel as
`hf_llmarch._configs`. Each holds a `model_type` plus config fields, and optionally `_source`
(where the shape comes from) and `_description`."""

import json
from importlib import resources
from pathlib import Path


def _preset_dir() -> Path:
    try:
        path = Path(str(resources.files("hf_llmarch._configs")))
        if path.is_dir() and any(path.glob("*.json")):
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "configs"  # source checkout


def list_presets() -> dict[str, dict]:
    """name -> preset dict, sorted by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(_preset_dir().glob("*.json"))}


def load_preset(name: str, **overrides):
    """The config for preset `name` (e.g. "llama-tiny"), with fields overridden by keyword."""
    from .models import CONFIG_CLASSES

    presets = list_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; available presets: {sorted(presets)}")
    fields = {k: v for k, v in presets[name].items() if not k.startswith("_")}
    model_type = fields.pop("model_type", None)
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"preset {name!r} has model_type={model_type!r}; known: {sorted(CONFIG_CLASSES)}")
    fields.update(overrides)
    return CONFIG_CLASSES[model_type](**fields)
