"""The `llmarch` command: list presets, init a random model, print its accounting, write a model
card, report the environment, convert checkpoints, and run the demo and benchmarks (which live in
their own modules)."""

import argparse
import dataclasses
import importlib
import json
import os
import sys
import types
import typing

import torch

from . import __version__, list_presets, load_preset
from .accounting import format_summary, summarize
from .configuration import LlmArchConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DELEGATES = {
    "demo": "train and sample a tiny model on the embedded corpus",
    "bench": "benchmark the mixers and models",
}


class CliError(Exception):
    """A user mistake: reported as one line on stderr with exit code 2."""


# Raised by our own subcommands for bad input (unknown preset, invalid config, unreadable path).
# NotImplementedError: accounting does not know a mixer yet.
USER_ERRORS = (CliError, ValueError, OSError, NotImplementedError)


def _parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs; values are JSON (1, 0.5, true, [1, 2], "x") or else plain strings."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {pair!r} is not of the form key=value")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def _preset_config(name: str, overrides: dict) -> LlmArchConfig:
    """load_preset refuses unknown field names (with a did-you-mean); the types are checked here,
    since a string the config cannot use would otherwise fail deep inside it, or not at all."""
    config_cls = type(load_preset(name))
    annotations = {f.name: f.type for f in dataclasses.fields(config_cls)}
    for key, value in overrides.items():
        expected = annotations.get(key)
        if expected is not None and not _accepts(expected, value):
            raise CliError(
                f"--set {key}={json.dumps(value)}: {key} takes {getattr(expected, '__name__', expected)}; "
                "VALUE is read as JSON (4, 1e-5, true, [1,2], null), else as a plain string"
            )
    try:
        return load_preset(name, **overrides)
    except ValueError as err:  # the preset alone loaded above, so an override caused this
        raise CliError(f"--set: {err}") from err


def _accepts(annotation, value) -> bool:
    """Whether `value` fits a field annotation like int, float, str, list[str] | None."""
    if isinstance(annotation, str):  # transformers' own fields: annotations we cannot evaluate
        return True
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(_fits(typing.get_origin(option) or option, value) for option in options)


def _fits(kind, value) -> bool:
    if isinstance(value, bool):  # bool is an int subclass, but only a bool field takes true/false
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(kind, type) and isinstance(value, kind)


def _resolve_config(target: str, allow_native: bool = False) -> LlmArchConfig:
    """A preset name or a checkpoint directory -> its config; with `allow_native`, a native
    llama / mistral / qwen2 / qwen3 / gpt2 checkpoint gives its llmarch_dense equivalent."""
    if os.path.isdir(target):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise CliError(f"cannot read a config from {target!r}: {err}") from err
        if isinstance(config, LlmArchConfig):
            return config
        if allow_native:
            return _native_equivalent(target, config)
        raise CliError(
            f"{target!r} holds a {config.model_type!r} checkpoint, not an hf_llmarch one; "
            "convert it first with `llmarch convert --from-hf`"
        )
    if target not in list_presets():
        raise CliError(f"{target!r} is neither a preset nor a checkpoint directory; presets: {', '.join(list_presets())}")
    return load_preset(target)


def _native_equivalent(target: str, native) -> LlmArchConfig:
    """Our config of a native checkpoint we can convert (same parameters and math)."""
    from .convert import ADAPTERS

    if native.model_type not in ADAPTERS:
        raise CliError(
            f"{target!r} holds a {native.model_type!r} checkpoint, which hf_llmarch cannot read; "
            f"convertible model types: {', '.join(sorted(ADAPTERS))}"
        )
    adapter = ADAPTERS[native.model_type]
    config_cls, _ = adapter.OURS
    return config_cls(**adapter.config_from_hf(native), converted_from=native.model_type)


def _cmd_list(args) -> int:
    from .models import HEAD_FAMILIES, FAMILIES

    print("families:")
    for name, (config_cls, *_) in (FAMILIES | HEAD_FAMILIES).items():
        print(f"  {name:<10} {config_cls.model_type}")
    print("presets:")
    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, preset in presets.items():
        print(f"  {name:<{width}}  {preset.get('_description', '')}")
    return 0


def _cmd_init(args) -> int:
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining, set_seed

    from .data import BYTE_VOCAB_SIZE, byte_tokenizer

    config = _preset_config(args.preset, _parse_overrides(args.set))
    set_seed(args.seed)
    # Encoders have no causal LM: they start as their pre-training model (MLM, plus NSP/SOP).
    auto_class = AutoModelForPreTraining if config.attention_mask_kind == "bidirectional" else AutoModelForCausalLM
    model = auto_class.from_config(config)
    model.save_pretrained(args.out)
    byte_tokenizer().save_pretrained(args.out)
    if config.vocab_size < BYTE_VOCAB_SIZE:
        print(
            f"warning: the byte tokenizer emits ids up to {BYTE_VOCAB_SIZE - 1} but vocab_size={config.vocab_size}",
            file=sys.stderr,
        )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved a random {args.preset} model ({n_params:,} parameters) and the byte tokenizer to {args.out}")
    return 0


def _cmd_info(args) -> int:
    if args.context < 1:
        raise CliError(f"--context {args.context} must be a positive number of tokens")
    summary = summarize(_resolve_config(args.target, allow_native=True), context=args.context, dtype=DTYPES[args.dtype])
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_env(args) -> int:
    from . import environment

    info = environment.collect()
    print(json.dumps(info, indent=2) if args.json else environment.format_report(info))
    return 0


def _convert_function(name: str):
    try:
        module = importlib.import_module("hf_llmarch.convert")
        return getattr(module, name)
    except (ImportError, AttributeError) as err:
        raise CliError(f"hf_llmarch.convert.{name} is not available: {err}") from err


def _cmd_convert(args) -> int:
    _convert_function("save_from_hf")(args.from_hf, args.out)
    print(f"saved the hf_llmarch checkpoint to {args.out}")
    return 0


def _cmd_export(args) -> int:
    _convert_function("save_to_hf")(args.to_hf, args.out, target=args.target)
    print(f"saved the native transformers checkpoint to {args.out}")
    return 0


def _cmd_upcycle(args) -> int:
    from .convert.checkpoint import copy_sidecar_files
    from .convert.upcycle import upcycle

    try:
        model = upcycle(args.src, args.experts, args.top_k, granularity=args.granularity, seed=args.seed)
    except ValueError as err:
        raise CliError(str(err)) from err
    model.save_pretrained(args.out)
    copy_sidecar_files(args.src, args.out)
    print(f"saved the upcycled {model.config.num_experts}-expert model to {args.out}")
    return 0


def _cmd_mla_convert(args) -> int:
    from .convert.checkpoint import copy_sidecar_files
    from .convert.mla_surgery import gqa_to_mla

    try:
        model, report = gqa_to_mla(args.src, kv_lora_rank=args.kv_lora_rank, rope_heads=args.rope_heads)
    except ValueError as err:
        raise CliError(str(err)) from err
    model.save_pretrained(args.out)
    copy_sidecar_files(args.src, args.out)
    cache = report["cache_bytes_per_token"]
    print(f"kv_lora_rank {report['kv_lora_rank']}, RoPE kept on {report['rope_heads']} virtual KV head(s)")
    print(f"cache bytes/token (bf16): {cache['before']:,.0f} -> {cache['after']:,.0f} ({cache['reduction']:.1%} smaller)")
    print("SVD relative error per layer: " + ", ".join(f"{e:.3g}" for e in report["svd_relative_error"]))
    print("key energy losing RoPE per layer: " + ", ".join(f"{e:.3g}" for e in report["rope_dropped_energy"]))
    print(f"saved the MLA model to {args.out}")
    return 0


def _cmd_card(args) -> int:
    from . import card

    config = _resolve_config(args.target)
    is_checkpoint = os.path.isdir(args.target)
    metrics = card.load_metrics(args.metrics) if args.metrics else {}
    if args.model_path or is_checkpoint:
        metrics.setdefault("model_path", args.model_path or args.target)
    out = args.out or (os.path.join(args.target, "README.md") if is_checkpoint else f"model_cards/{args.target}.md")
    if os.path.exists(out) and not args.force:
        raise CliError(f"{out} already exists; pass --force to overwrite it or --out to write elsewhere")
    title = args.title or os.path.basename(os.path.normpath(args.target))
    path = card.write_card(out, card.render_card(config, metrics, title=title))
    print(f"wrote the model card to {path}")
    return 0


def _unavailable(name: str, err: Exception):
    def handler(args) -> int:
        raise CliError(f"`llmarch {name}` needs hf_llmarch.{name}, which failed to import: {err}")

    return handler


def _add_delegate(subparsers, name: str, build: bool):
    """Subcommand whose arguments and body live in hf_llmarch.<name>; imported only when it runs,
    so a broken or missing module never breaks the other subcommands."""
    parser = subparsers.add_parser(name, help=DELEGATES[name], description=DELEGATES[name])
    if not build:
        return
    try:
        module = importlib.import_module(f"hf_llmarch.{name}")
    except ImportError as err:
        parser.description += f" (unavailable: hf_llmarch.{name} failed to import: {err})"
        parser.set_defaults(handler=_unavailable(name, err))
        return
    module.add_arguments(parser)
    # The module reports its own errors; only a failed import is ours to turn into one line.
    parser.set_defaults(handler=module.run, user_errors=(CliError,))


def _add_own_commands(subparsers):
    p = subparsers.add_parser("list", help="list model families and presets")
    p.set_defaults(handler=_cmd_list)

    p = subparsers.add_parser("init", help="save a randomly initialised model of a preset, with the byte tokenizer")
    p.add_argument("preset", metavar="PRESET", help="preset name (see `llmarch list`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed for the initialisation (default 0)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field; VALUE is JSON (4, 1e-5, true, [1,2]) or a plain string; repeatable",
    )
    p.set_defaults(handler=_cmd_init)

    p = subparsers.add_parser("info", help="parameters, FLOPs/token and cache bytes/token of a preset or checkpoint")
    p.add_argument(
        "target", metavar="PRESET_OR_PATH",
        help="preset name, or an hf_llmarch or native llama/mistral/qwen2/qwen3/gpt2 checkpoint directory",
    )
    p.add_argument("--context", type=int, default=4096, help="context length in tokens (default 4096)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="cache dtype (default bf16)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_info)

    p = subparsers.add_parser("card", help="write a model card (README.md) for a checkpoint or preset")
    p.add_argument("target", metavar="PRESET_OR_PATH", help="preset name or hf_llmarch checkpoint directory")
    p.add_argument("--metrics", metavar="JSON", help="JSON object of measured numbers (see hf_llmarch.card.METRIC_KEYS)")
    p.add_argument("--title", help="card title (default: the preset or folder name)")
    p.add_argument("--model-path", help="hub id or path shown in the usage snippet (default: the checkpoint path)")
    p.add_argument("--out", help="output file (default: PATH/README.md, or model_cards/PRESET.md)")
    p.add_argument("--force", action="store_true", help="overwrite an existing card")
    p.set_defaults(handler=_cmd_card)

    p = subparsers.add_parser("env", help="versions, optional kernels and op paths on this machine, for bug reports")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_env)

    p = subparsers.add_parser("convert", help="convert a native transformers checkpoint to hf_llmarch")
    p.add_argument("--from-hf", required=True, metavar="SRC", help="native checkpoint directory or hub id")
    p.add_argument("--out", required=True, metavar="DST", help="output directory")
    p.set_defaults(handler=_cmd_convert)

    p = subparsers.add_parser("upcycle", help="turn a dense checkpoint (ours or native llama-like) into an MoE")
    p.add_argument("src", metavar="SRC", help="dense checkpoint directory")
    p.add_argument("--experts", type=int, required=True, help="experts per MoE layer")
    p.add_argument("--top-k", type=int, required=True, help="experts each token is routed to")
    p.add_argument("--granularity", type=int, default=1, help="cut the MLP into this many fine-grained experts (default 1: copies)")
    p.add_argument("--seed", type=int, default=0, help="seed of the router's random initialisation")
    p.add_argument("--out", required=True, metavar="DST", help="output directory")
    p.set_defaults(handler=_cmd_upcycle)

    p = subparsers.add_parser("mla-convert", help="turn an MHA/GQA checkpoint (ours or native llama-like) into MLA")
    p.add_argument("src", metavar="SRC", help="attention checkpoint directory")
    p.add_argument("--kv-lora-rank", type=int, default=None, help="latent width (default: the full rank, exact)")
    p.add_argument("--rope-heads", type=int, default=None, help="virtual KV heads that keep RoPE (default: all, exact)")
    p.add_argument("--out", required=True, metavar="DST", help="output directory")
    p.set_defaults(handler=_cmd_mla_convert)

    p = subparsers.add_parser("export", help="export an hf_llmarch checkpoint to its native transformers model")
    p.add_argument("--to-hf", required=True, metavar="SRC", help="hf_llmarch checkpoint directory")
    p.add_argument("--out", required=True, metavar="DST", help="output directory")
    p.add_argument(
        "--target", metavar="MODEL_TYPE",
        help="llama, mistral, qwen2, qwen3, gpt2, mixtral or qwen3_moe (default: the type it was converted from, else the closest)",
    )
    p.set_defaults(handler=_cmd_export)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; `command` names the subcommand about to run, whose delegate module
    (demo, bench) is the only one imported."""
    parser = argparse.ArgumentParser(prog="llmarch", description="LLM architecture families for transformers")
    parser.add_argument("--version", action="version", version=f"hf_llmarch {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_own_commands(subparsers)
    for name in DELEGATES:
        _add_delegate(subparsers, name, build=name == command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.handler(args)
    except getattr(args, "user_errors", USER_ERRORS) as err:
        message = " ".join(str(err).split())  # one line, whatever the source
        print(f"llmarch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
