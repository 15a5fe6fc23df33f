"""The end-to-end demo: `llmarch demo` or `python -m hf_llmarch.demo`.

It pretrains a tiny randomly initialised model on the embedded corpus with `Trainer`, generates
text, LoRA fine-tunes it with PEFT's default targets, saves and reloads it through the Auto
classes, and writes a model card: every step a user's ordinary transformers code would take.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from . import card as model_card
from .console import show_on_console
from .data import byte_tokenizer, load_text, make_lm_datasets
from .data.lm_data import LMBlockDataset
from .presets import list_presets, load_preset

# The demo reports through a logger; `run` shows it on stdout as plain lines.
log = logging.getLogger("hf_llmarch.demo")

DESCRIPTION = (
    "Pretrain a tiny model from scratch on CPU, generate text, LoRA fine-tune it, save and reload it "
    "through the Auto classes, and write its model card."
)
# About two minutes in all for llama-tiny on a quiet 2-core CPU (600 steps measured 64 s of pretraining).
DEFAULT_STEPS = 1000
DEFAULT_LORA_STEPS = 60
# Above this the demo would take hours on CPU; --force overrides.
MAX_DEMO_PARAMETERS = 20_000_000
MAX_EVAL_BLOCKS = 128  # a fixed eval set keeps evaluation to a few seconds
LORA_TEXT_CHARS = 120_000
PROMPTS = ["Return the ", "If the file", "This class "]
GENERATE_TOKENS = 64


class DemoError(Exception):
    """A bad option or input: reported as one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    presets = ", ".join(list_presets())
    parser.add_argument("--preset", default="llama-tiny", help=f"model preset (default llama-tiny; one of: {presets})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="pretraining steps (default %(default)s)")
    parser.add_argument(
        "--dataset",
        default=None,
        help="training text: a local text file, a folder of .txt files or a `datasets` name "
        "with a 'text' column (default: the embedded corpus of Python docstrings)",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    parser.add_argument("--cards-dir", default="model_cards", help="where the model card goes (default %(default)s)")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per sequence (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument(
        "--lora-steps", type=int, default=DEFAULT_LORA_STEPS, help="LoRA steps, 0 to skip (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--max-time", type=float, default=None, help="stop pretraining after this many seconds")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for PyTorch (default: its own choice; 1 is often fastest for tiny models on a busy machine)",
    )
    parser.add_argument("--force", action="store_true", help=f"allow presets above {MAX_DEMO_PARAMETERS:,} parameters")
    return parser


def _section(title: str):
    log.info(f"\n=== {title} ===")


def _count_parameters(config) -> int:
    try:
        from .accounting import count_parameters

        return int(count_parameters(config)["total"])
    except Exception:  # accounting cannot describe this config: count a weightless model instead
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config).num_parameters()


def build_config(preset: str, tokenizer, force: bool = False):
    """The preset's config, resized to the byte tokenizer; refuses shapes too big for a CPU demo."""
    config = load_preset(
        preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    n_params = _count_parameters(config)
    if n_params > MAX_DEMO_PARAMETERS and not force:
        tiny = ", ".join(name for name in list_presets() if name.endswith("-tiny"))
        raise DemoError(
            f"preset {preset!r} has {n_params:,} parameters (even with the 258-token byte vocabulary); "
            f"training it in this demo would take hours on a CPU. Use a tiny preset ({tiny}) "
            "or pass --force."
        )
    return config


def prepare_data(args, tokenizer):
    """Pretraining train/eval sets from --dataset, and a LoRA set in a different style."""
    text = load_text(args.dataset)
    train_ds, eval_ds = make_lm_datasets(text, tokenizer, block_size=args.block_size)
    eval_ds = LMBlockDataset(eval_ds.blocks[:MAX_EVAL_BLOCKS], args.block_size)
    # The LoRA "task" is the same prose SHOUTED IN CAPITALS: a style the base model has barely
    # seen, so both the loss drop and the change in generations are easy to see.
    lora_text = text[-LORA_TEXT_CHARS:].upper()
    lora_train, lora_eval = make_lm_datasets(lora_text, tokenizer, block_size=args.block_size, eval_fraction=0.1)
    log.info(f"training text: {_describe_dataset(args.dataset)}, {len(text):,} characters")
    log.info(f"pretraining:   {len(train_ds)} train / {len(eval_ds)} eval blocks of {args.block_size} tokens")
    log.info(f"LoRA style:    upper-cased last {len(lora_text):,} characters, {len(lora_train)} train blocks")
    return train_ds, eval_ds, lora_train, lora_eval


def _describe_dataset(dataset: str | None) -> str:
    return "embedded corpus (Python standard-library docstrings)" if dataset in (None, "default") else repr(dataset)


class _TimeLimit(TrainerCallback):
    """Stops training once `seconds` have passed (the --max-time option)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            log.info(f"\n--max-time {self.seconds:g}s reached at step {state.global_step}: stopping")
            control.should_training_stop = True


def make_trainer(model, train_ds, eval_ds, *, output_dir, steps, batch_size, lr, seed, max_time=None) -> Trainer:
    use_cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size,
        learning_rate=lr,
        weight_decay=0.1,
        adam_beta2=0.95,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a fraction of max_steps
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 20),
        logging_first_step=True,
        eval_strategy="no",  # evaluated explicitly before and after
        save_strategy="no",
        prediction_loss_only=True,
        report_to=[],
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=use_cuda,
        seed=seed,
    )
    callbacks = [_TimeLimit(max_time)] if max_time else None
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def _print_loss_table(log_history: list[dict], max_rows: int = 12):
    rows = [entry for entry in log_history if "loss" in entry]
    if len(rows) > max_rows:  # keep the first and last, evenly thinned in between
        rows = [rows[round(i * (len(rows) - 1) / (max_rows - 1))] for i in range(max_rows)]
    log.info(f"{'step':>6}  {'train loss':>10}  {'lr':>9}")
    for entry in rows:
        log.info(f"{entry['step']:>6}  {entry['loss']:>10.4f}  {entry.get('learning_rate', 0.0):>9.2e}")


def write_loss_curve(log_history: list[dict], eval_points: list[tuple[int, float]], out: Path) -> Path:
    """loss_curve.csv (step, train_loss, eval_loss) and, with matplotlib, loss_curve.png."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        if "loss" in entry:
            by_step.setdefault(entry["step"], {})["train_loss"] = entry["loss"]
    for step, loss in eval_points:
        by_step.setdefault(step, {})["eval_loss"] = loss
    path = out / "loss_curve.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "train_loss", "eval_loss"])
        for step in sorted(by_step):
            row = by_step[step]
            writer.writerow([step, row.get("train_loss", ""), row.get("eval_loss", "")])
    _plot_loss_curve(by_step, out / "loss_curve.png")
    return path


def _plot_loss_curve(by_step: dict[int, dict], path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: skipping loss_curve.png")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "eval_loss"):
        points = [(step, row[key]) for step, row in sorted(by_step.items()) if key in row]
        ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info(f"wrote {path}")


def pretrain(args, config, train_ds, eval_ds, out: Path) -> tuple:
    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    n_params = model.num_parameters()
    log.info(f"{args.preset}: {config.model_type}, pattern {config.layer_pattern!r}, {n_params:,} parameters")
    trainer = make_trainer(
        model, train_ds, eval_ds, output_dir=out / "trainer", steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, max_time=args.max_time,
    )
    before = trainer.evaluate()["eval_loss"]
    uniform = math.log(config.vocab_size)
    log.info(f"eval loss at init: {before:.4f} (perplexity {_perplexity(before):.1f}; uniform would be {uniform:.4f})")
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    history = trainer.state.log_history
    _print_loss_table(history)
    log.info(f"eval loss: {before:.4f} -> {after:.4f}   perplexity: {_perplexity(before):.1f} -> {_perplexity(after):.2f}")
    csv_path = write_loss_curve(history, [(0, before), (trainer.state.global_step, after)], out)
    log.info(f"wrote {csv_path}")
    return trainer.model, before, after, trainer.state.global_step


@torch.no_grad()
def generate_samples(model, tokenizer, prompts=PROMPTS, max_new_tokens=GENERATE_TOKENS, seed=0) -> dict:
    """Greedy and sampled continuations of a left-padded batch of prompts."""
    model.eval()
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    settings = {"greedy": dict(do_sample=False), "sampled": dict(do_sample=True, temperature=0.8, top_k=40)}
    samples = {}
    for name, kwargs in settings.items():
        torch.manual_seed(seed)
        ids = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
        texts = tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        samples[name] = texts
        for prompt, text in zip(prompts, texts):
            log.info(f"[{name:>7}] {prompt + text!r}")
    return samples


def lora_finetune(args, model, lora_train, lora_eval, out: Path) -> tuple:
    """LoRA on PEFT's default targets for this model type (registered by hf_llmarch), then merge."""
    from peft import LoraConfig, get_peft_model

    # No target_modules: `import hf_llmarch` registered q/k/v/o and MLP projections as defaults.
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0)
    with warnings.catch_warnings():  # peft still calls a transformers property deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info(f"LoRA adapters: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    trainer = make_trainer(
        peft_model, lora_train, lora_eval, output_dir=out / "lora-trainer", steps=args.lora_steps,
        batch_size=args.batch_size, lr=5e-3, seed=args.seed,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    log.info(f"LoRA eval loss on the upper-case style: {before:.4f} -> {after:.4f}")
    merged = trainer.model.merge_and_unload()
    log.info(f"merged the adapters: {type(merged).__name__} with {merged.num_parameters():,} parameters")
    return merged, before, after, trainer.state.global_step


@torch.no_grad()
def save_and_reload(model, tokenizer, path: Path) -> float:
    """Save, reload through the Auto classes and check the logits match; returns the max difference."""
    model = model.to("cpu").eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    if reloaded_tok(PROMPTS, padding=True)["input_ids"] != inputs["input_ids"].tolist():
        raise RuntimeError(f"the tokenizer reloaded from {path} encodes the prompts differently")
    expected, actual = model(**inputs).logits, reloaded(**inputs).logits
    diff = (expected - actual).abs().max().item()
    if not torch.allclose(expected, actual, rtol=0, atol=1e-5):
        raise RuntimeError(f"logits of the model reloaded from {path} differ by up to {diff:.3g}")
    log.info(f"saved to {path}; reloaded {type(reloaded).__name__} via AutoModelForCausalLM")
    log.info(f"reloaded logits match the in-memory model (max |diff| {diff:.1e})")
    return diff


def _write_model_card(args, config, metrics: dict) -> Path:
    text = model_card.render_card(
        config,
        metrics,
        title=f"{args.preset} (hf_llmarch demo)",
        notes="Generated by `llmarch demo`; it uses a byte-level tokenizer (258 tokens).",
    )
    path = model_card.write_card(Path(args.cards_dir) / f"{args.preset}-demo.md", text)
    # The checkpoint carries its card too, so uploading the folder publishes it as the Hub README.
    model_card.write_card(Path(metrics["model_path"]) / "README.md", text)
    log.info(f"wrote {path} and README.md in {metrics['model_path']}")
    return path


def _summary(metrics: dict, timings: dict, paths: dict):
    _section("Summary")
    log.info(f"eval loss {metrics['eval_loss_before']:.4f} -> {metrics['eval_loss_after']:.4f} "
          f"after {metrics['steps']} steps")
    for name, path in paths.items():
        log.info(f"{name:>12}: {path}")
    log.info("     timings: " + ", ".join(f"{name} {secs:.1f}s" for name, secs in timings.items()))


def _demo(args) -> int:
    timings: dict[str, float] = {}
    clock = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    _section("1/6 Data and config")
    tokenizer = byte_tokenizer()
    try:
        config = build_config(args.preset, tokenizer, force=args.force)
        train_ds, eval_ds, lora_train, lora_eval = prepare_data(args, tokenizer)
    except ValueError as exc:  # unknown preset, unloadable dataset, text too short: all user input
        raise DemoError(str(exc)) from exc
    timings["data"] = time.monotonic() - clock

    _section(f"2/6 Pretraining {args.preset} from scratch for {args.steps} steps")
    model, before, after, steps = pretrain(args, config, train_ds, eval_ds, out)
    timings["pretrain"] = time.monotonic() - clock - sum(timings.values())

    _section("3/6 Generation (greedy and sampled, left-padded batch)")
    generate_samples(model, tokenizer, seed=args.seed)

    metrics = {
        "num_parameters": model.num_parameters(), "training_data": _describe_dataset(args.dataset),
        "steps": steps, "eval_loss_before": before, "eval_loss_after": after,
        "train_time_s": timings["pretrain"], "model_path": str(out / "model"),
    }
    if args.lora_steps > 0:
        _section(f"4/6 LoRA fine-tuning for {args.lora_steps} steps")
        model, lora_before, lora_after, lora_steps = lora_finetune(args, model, lora_train, lora_eval, out)
        metrics.update(lora_steps=lora_steps, lora_data="the same text upper-cased",
                       lora_loss_before=lora_before, lora_loss_after=lora_after)
        generate_samples(model, tokenizer, prompts=PROMPTS[:1], max_new_tokens=48, seed=args.seed)
    else:
        _section("4/6 LoRA fine-tuning skipped (--lora-steps 0)")
    timings["generate+lora"] = time.monotonic() - clock - sum(timings.values())

    _section("5/6 Save and reload")
    save_and_reload(model, tokenizer, out / "model")

    _section("6/6 Model card")
    card_path = _write_model_card(args, config, metrics)
    timings["total"] = time.monotonic() - clock
    _summary(metrics, timings, {"model": out / "model", "loss curve": out / "loss_curve.csv", "model card": card_path})
    return 0


def run(args) -> int:
    """Run the demo for parsed `args`; returns the exit status (2 for a bad option or input)."""
    show_on_console(log)
    if args.steps < 1 or args.lora_steps < 0 or args.batch_size < 1 or (args.threads or 0) < 0:
        log.error("error: --steps and --batch-size must be positive; --lora-steps, --threads non-negative")
        return 2
    transformers.logging.set_verbosity_warning()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _demo(args)
    except DemoError as exc:
        log.error(f"error: {exc}")
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_llmarch.demo", description=DESCRIPTION)
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
