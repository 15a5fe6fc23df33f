"""Named presets: JSON files in the top-level configs/ folder, shipped in the wheel as
`hf_llmarch._configs`. Each holds a `model_type` plus config fields, and optionally `_source`
(where the shape comes from) and `_description`."""

import dataclasses
import difflib
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
    config_cls = CONFIG_CLASSES[model_type]
    _check_override_names(config_cls, overrides)
    fields.update(overrides)
    return config_cls(**fields)


# Accepted by transformers' config init without being dataclass fields.
_INIT_ONLY_KEYS = {"num_labels", "attn_implementation", "torch_dtype", "rope_theta", "rope_scaling"}


def _check_override_names(config_cls, overrides: dict):
    """Configs keep unknown keywords as attributes, so a typo like `hiden_size` would be ignored silently."""
    from .mixers import mixer_config_fields

    known = {f.name for f in dataclasses.fields(config_cls)} | _INIT_ONLY_KEYS | mixer_config_fields()
    for key in overrides:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"{config_cls.__name__} has no field {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
