"""The end-to-end demo: `llmarch demo` or `python -m hf_llmarch.demo`.

It pretrains a tiny randomly initialised model on the embedded corpus with `Trainer` (evaluating
it periodically and plotting the losses), generates text from a left-padded batch, saves it, LoRA
fine-tunes it with PEFT's default targets and saves the adapter beside it, reloads both (Auto
classes, `PeftModel.from_pretrained`) and writes a model card: every step a user's ordinary
transformers code would take. Everything it writes goes under --out (default runs/demo).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from . import card as model_card
from .console import show_on_console
from .data import byte_tokenizer, load_text, make_lm_datasets
from .data.lm_data import LMBlockDataset
from .demo_checks import (
    PROMPTS,
    check_padded_batch,
    generate_samples,
    prompt_logits,
    reload_and_check,
    save_model,
)
from .presets import list_presets, load_preset
from .training_report import perplexity, print_loss_table, require_matplotlib, write_loss_curve

# The demo reports through a logger; `run` shows it on stdout as plain lines.
log = logging.getLogger("hf_llmarch.demo")

DESCRIPTION = (
    "Pretrain a tiny model from scratch on CPU, generate text, LoRA fine-tune it, save the model and "
    "the adapter, reload both, and write its model card, all under --out."
)
# About two minutes in all for llama-tiny on a quiet 2-core CPU (measured: 116 s of pretraining with
# its 11 evaluations, 131 s end to end; --steps 200 takes 42 s).
DEFAULT_STEPS = 1000
DEFAULT_LORA_STEPS = 60
# Above this the demo would take hours on CPU; --force overrides.
MAX_DEMO_PARAMETERS = 20_000_000
MAX_EVAL_BLOCKS = 128  # a fixed eval set keeps evaluation to a few seconds
EVAL_POINTS = 10  # evaluations spread over pretraining, besides the one at step 0
LORA_TEXT_CHARS = 120_000
MODEL_DIR, ADAPTER_DIR = "model", "lora-adapter"  # inside --out


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


def make_trainer(
    model, train_ds, eval_ds, *, output_dir, steps, batch_size, lr, seed, max_time=None, eval_every=None
) -> Trainer:
    """The demo's Trainer; with `eval_every` it also evaluates at step 0 and every `eval_every` steps."""
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
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        eval_on_start=bool(eval_every),
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


def pretrain(args, config, train_ds, eval_ds, out: Path) -> tuple:
    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    n_params = model.num_parameters()
    log.info(f"{args.preset}: {config.model_type}, pattern {config.layer_pattern!r}, {n_params:,} parameters")
    trainer = make_trainer(
        model, train_ds, eval_ds, output_dir=out / "trainer", steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, max_time=args.max_time, eval_every=max(1, args.steps // EVAL_POINTS),
    )
    trainer.train()
    evals = _eval_points(trainer)
    (_, before), (_, after) = evals[0], evals[-1]
    uniform = math.log(config.vocab_size)
    log.info(f"eval loss at init: {before:.4f} (perplexity {perplexity(before):.1f}; uniform would be {uniform:.4f})")
    history = trainer.state.log_history
    print_loss_table(history)
    log.info("eval loss by step: " + ", ".join(f"{step}: {loss:.3f}" for step, loss in evals))
    log.info(f"eval loss: {before:.4f} -> {after:.4f}   perplexity: {perplexity(before):.1f} -> {perplexity(after):.2f}")
    csv_path = write_loss_curve(history, evals, out, title=f"{args.preset} pretraining on {_short_dataset(args)}")
    log.info(f"wrote {csv_path}")
    return trainer.model, before, after, trainer.state.global_step


def _eval_points(trainer) -> list[tuple[int, float]]:
    """(step, eval loss) of each evaluation, ending at the last step even if --max-time stopped early."""
    evals = [(entry["step"], entry["eval_loss"]) for entry in trainer.state.log_history if "eval_loss" in entry]
    if evals[-1][0] != trainer.state.global_step:
        evals.append((trainer.state.global_step, trainer.evaluate()["eval_loss"]))
    return evals


def _short_dataset(args) -> str:
    return "the embedded corpus" if args.dataset in (None, "default") else Path(args.dataset).name


def lora_finetune(args, model, lora_train, lora_eval, out: Path) -> tuple:
    """LoRA on PEFT's default targets for this model type (registered by hf_llmarch); saves the adapter.

    `get_peft_model` wraps `model` in place, so the base model must be saved before this runs.
    """
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
    peft_model.save_pretrained(out / ADAPTER_DIR)
    log.info(f"saved the LoRA adapter to {out / ADAPTER_DIR}")
    return peft_model, before, after, trainer.state.global_step


def _write_model_card(args, config, metrics: dict) -> Path:
    text = model_card.render_card(
        config,
        metrics,
        title=f"{args.preset} (hf_llmarch demo)",
        notes="Generated by `llmarch demo`; it uses a byte-level tokenizer (258 tokens).",
    )
    # README.md in the checkpoint is its Hub card: uploading the folder publishes it.
    path = model_card.write_card(Path(metrics["model_path"]) / "README.md", text)
    log.info(f"wrote {path}")
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
    model_dir, adapter_dir = out / MODEL_DIR, out / ADAPTER_DIR

    _section("1/7 Data and config")
    try:
        require_matplotlib()
    except ImportError as exc:
        raise DemoError(str(exc)) from exc
    tokenizer = byte_tokenizer()
    try:
        config = build_config(args.preset, tokenizer, force=args.force)
        train_ds, eval_ds, lora_train, lora_eval = prepare_data(args, tokenizer)
    except ValueError as exc:  # unknown preset, unloadable dataset, text too short: all user input
        raise DemoError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    timings["data"] = time.monotonic() - clock

    _section(f"2/7 Pretraining {args.preset} from scratch for {args.steps} steps")
    model, before, after, steps = pretrain(args, config, train_ds, eval_ds, out)
    timings["pretrain"] = time.monotonic() - clock - sum(timings.values())

    _section("3/7 Generation (greedy and sampled, left-padded batch)")
    samples = generate_samples(model, tokenizer, seed=args.seed)
    check_padded_batch(model, tokenizer, PROMPTS, samples["greedy"])

    _section("4/7 Save the pretrained model")
    base_logits = save_model(model, tokenizer, model_dir)
    metrics = {
        "num_parameters": model.num_parameters(), "training_data": _describe_dataset(args.dataset),
        "steps": steps, "eval_loss_before": before, "eval_loss_after": after,
        "train_time_s": timings["pretrain"], "model_path": str(model_dir),
    }
    if args.lora_steps > 0:
        _section(f"5/7 LoRA fine-tuning for {args.lora_steps} steps")
        peft_model, lora_before, lora_after, lora_steps = lora_finetune(args, model, lora_train, lora_eval, out)
        metrics.update(lora_steps=lora_steps, lora_data="the same text upper-cased", lora_adapter=str(adapter_dir),
                       lora_loss_before=lora_before, lora_loss_after=lora_after)
        generate_samples(peft_model, tokenizer, prompts=PROMPTS[:1], max_new_tokens=48, seed=args.seed)
        adapted_logits = prompt_logits(peft_model, tokenizer)
    else:
        _section("5/7 LoRA fine-tuning skipped (--lora-steps 0)")
        adapter_dir = adapted_logits = None
    timings["generate+lora"] = time.monotonic() - clock - sum(timings.values())

    _section("6/7 Reload and check")
    reload_and_check(tokenizer, model_dir, base_logits, adapter_dir, adapted_logits)

    _section("7/7 Model card")
    card_path = _write_model_card(args, config, metrics)
    timings["total"] = time.monotonic() - clock
    paths = {"model": model_dir, "LoRA adapter": adapter_dir, "loss curve": out / "loss_curve.png",
             "model card": card_path}
    _summary(metrics, timings, {name: path for name, path in paths.items() if path})
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
