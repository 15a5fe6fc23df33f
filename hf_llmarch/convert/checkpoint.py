"""Reading and writing checkpoint directories for conversion, with strict bookkeeping.

`TensorSource` hands out a checkpoint's tensors by name, checks each against the shape the
target needs, and at the end reports every tensor nobody asked for: a conversion consumes the
whole checkpoint or fails with an error that names the key (or the file).
"""

import copy
import json
import logging
import pickle
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.initialization import no_init_weights

SAFE_INDEX, SAFE_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
# Files that travel with the weights unchanged (tokenizer, generation defaults).
SIDECAR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def native_pad_token_id(value: int | None) -> int | None:
    """Some native configs say "no pad token" with a negative id (e.g. -1); ours says None."""
    if value is not None and value < 0:
        logging.getLogger("hf_llmarch").warning("pad_token_id=%s in the source config means no pad token: using None", value)
        return None
    return value


def rename_key(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    """`key` with each (regex anchored at the start, replacement) of `renames` applied in order."""
    for pattern, replacement in renames:
        key = re.sub("^" + pattern, replacement, key)
    return key


def take_under_native_names(src, expected: dict[str, tuple], native_key) -> dict:
    """For export: each native key of `expected` filled from our tensor whose `native_key(ours)` it is."""
    ours = {native_key(key): key for key in src.keys()}
    return {key: src.take(ours.get(key, key), shape) for key, shape in expected.items()}


def shared_fields_from_hf(cfg) -> dict:
    """Our config fields every native causal LM config holds under the same names: embedding tying,
    init scale (RWKV has none: ours keeps its default), cache use and the special token ids."""
    init_range = {"initializer_range": cfg.initializer_range} if hasattr(cfg, "initializer_range") else {}
    return dict(
        tie_word_embeddings=cfg.tie_word_embeddings,
        **init_range,
        use_cache=cfg.use_cache,
        pad_token_id=native_pad_token_id(getattr(cfg, "pad_token_id", None)),
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )


def refuse_unless_fixed(config, target: str, fixed: dict) -> None:
    """ValueError naming the first field of ours whose value `target` cannot reproduce (it needs `fixed`)."""
    for field, value in fixed.items():
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed in {target} (which needs {value!r})")


def refuse_split_attention_bias(config, target: str) -> None:
    """For targets whose one attention_bias covers q, k, v and o together."""
    if config.attention_bias != config.attention_out_bias:
        raise ValueError(
            f"attention_bias={config.attention_bias} with attention_out_bias={config.attention_out_bias} cannot be "
            f"expressed in {target}, whose attention_bias covers q, k, v and o together"
        )


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: missing, unexpected or mis-shaped tensors, or unreadable files."""


class TensorSource:
    """Named tensors, loaded lazily; remembers which ones were consumed."""

    def __init__(self, origin: str, shapes: dict[str, tuple], load: Callable[[str], torch.Tensor]):
        self.origin = origin
        self.shapes = shapes
        self._load = load
        self.consumed: set[str] = set()

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], origin: str) -> "TensorSource":
        return cls(origin, {k: tuple(v.shape) for k, v in state_dict.items()}, state_dict.__getitem__)

    @classmethod
    def from_dir(cls, path: str | Path) -> "TensorSource":
        path = Path(path)
        if (path / SAFE_INDEX).is_file():
            return cls._from_files(path, _read_index(path / SAFE_INDEX), _open_safetensors)
        if (path / SAFE_SINGLE).is_file():
            return cls._from_files(path, {SAFE_SINGLE: None}, _open_safetensors)
        if (path / BIN_INDEX).is_file():
            return cls._from_files(path, _read_index(path / BIN_INDEX), _open_torch_bin)
        if (path / BIN_SINGLE).is_file():
            return cls._from_files(path, {BIN_SINGLE: None}, _open_torch_bin)
        raise CheckpointError(f"no weights in {path}: expected one of {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE}, {BIN_INDEX}")

    @classmethod
    def _from_files(cls, root: Path, listed: dict[str, list[str] | None], opener) -> "TensorSource":
        """`listed` maps each file to the keys its index promises (None: no index)."""
        shapes, readers = {}, {}
        for name, promised in listed.items():
            file = root / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint file {file} is listed in the index but does not exist")
            file_shapes, read = opener(file)
            missing = sorted(set(promised or ()) - set(file_shapes))
            if missing:
                raise CheckpointError(f"{file} lacks {missing[:5]} which the index assigns to it")
            for key, shape in file_shapes.items():
                if key in shapes:
                    raise CheckpointError(f"tensor {key!r} appears in more than one file of {root} (again in {file})")
                shapes[key], readers[key] = shape, read
        return cls(str(root), shapes, lambda key: readers[key](key))

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def keys(self) -> list[str]:
        return list(self.shapes)

    def take(self, key: str, shape: Iterable[int] | None = None) -> torch.Tensor:
        """The tensor `key`, checked against `shape`; marks it consumed."""
        if key not in self.shapes:
            raise CheckpointError(f"tensor {key!r} is missing from {self.origin}")
        if shape is not None and tuple(self.shapes[key]) != tuple(shape):
            raise CheckpointError(
                f"tensor {key!r} in {self.origin} has shape {tuple(self.shapes[key])}, expected {tuple(shape)} from the config"
            )
        self.consumed.add(key)
        return self._load(key)

    def check_consumed(self, ignored: Iterable[str] = ()):
        """Raise on any tensor not consumed and not matched (fullmatch) by one of the `ignored` regexes."""
        patterns = [re.compile(p) for p in ignored]
        left = [k for k in self.shapes if k not in self.consumed and not any(p.fullmatch(k) for p in patterns)]
        if left:
            raise CheckpointError(
                f"unexpected tensor(s) in {self.origin} that the converter does not use: {sorted(left)[:10]}"
                + (f" (and {len(left) - 10} more)" if len(left) > 10 else "")
            )


def _read_index(file: Path) -> dict[str, list[str]]:
    """Shard file -> the keys the index assigns to it."""
    try:
        weight_map = json.loads(file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read the shard index {file}: {err}") from err
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    return shards


def _open_safetensors(file: Path):
    try:
        handle = safe_open(str(file), framework="pt")
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {file} (corrupt or truncated safetensors file): {err}") from err
    return shapes, handle.get_tensor


def _open_torch_bin(file: Path):
    try:
        state_dict = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"cannot read {file} (corrupt or truncated torch file): {err}") from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{file} does not hold a flat dict of tensors")
    return {k: tuple(v.shape) for k, v in state_dict.items()}, state_dict.__getitem__


def read_config_json(path: str | Path) -> dict:
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{file} does not exist: a checkpoint directory needs its config.json") from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot parse {file}: {err}") from err


def copy_sidecar_files(src: str | Path, out: str | Path) -> list[str]:
    """Copy tokenizer and generation files from `src` to `out` when `src` is a directory; returns their names."""
    src = Path(src)
    if not src.is_dir():
        return []
    copied = []
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, Path(out) / name)
            copied.append(name)
    return copied


def append_tensors(out: Path, tensors: dict) -> None:
    """Add `tensors` to the safetensors checkpoint save_pretrained wrote in `out`: into its single file,
    or as one more shard listed in its index."""
    from safetensors.torch import load_file, save_file

    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    index = out / SAFE_INDEX
    if index.is_file():
        shard = "model-extra.safetensors"
        save_file(tensors, out / shard, metadata={"format": "pt"})
        listing = json.loads(index.read_text())
        listing["weight_map"].update(dict.fromkeys(tensors, shard))
        index.write_text(json.dumps(listing, indent=2, sort_keys=True) + "\n")
        return
    merged = load_file(out / SAFE_SINGLE) | tensors
    save_file(merged, out / SAFE_SINGLE, metadata={"format": "pt"})


def expected_shapes(model_cls, config) -> dict[str, tuple]:
    """Every state-dict key the model has and its shape, from a weightless (meta) instance."""
    with torch.device("meta"), no_init_weights():
        model = model_cls(copy.deepcopy(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(model_cls, config, state_dict: dict, dtype: torch.dtype, attn_implementation: str | None):
    """Instantiate without random init (fast for big models) and load `state_dict` strictly."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with no_init_weights():
        model = model_cls._from_config(config, dtype=dtype, **kwargs)
    model.load_state_dict(state_dict, strict=True)
    model.tie_weights()
    return model.eval()
