"""Train several tiny architectures on the same data for the same steps and compare their losses.

    python examples/compare_architectures.py --steps 100

Every preset gets the same seed, batches, optimizer and schedule, so the table compares the
architectures (at roughly equal size) and nothing else: dense (Llama, GPT-2), MoE (Mixtral),
retention and Jamba-style hybrids, and the state-space models (Mamba, Mamba-2, S4D). The eval
loss of each is also drawn against the step in runs/compare/eval_loss.png (and .csv).
"""

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from torch.utils.data import Subset
from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments, default_data_collator

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets
from hf_llmarch.training_report import require_matplotlib

CANDIDATES = [
    "llama-tiny", "gpt2-tiny", "mixtral-tiny", "hybrid-tiny", "jamba-tiny", "mamba-tiny", "mamba2-tiny", "s4d-tiny",
]
OUT = Path("runs/compare")
EVALS = 5  # eval points along the run, besides step 0


def train_one(preset, train_ds, eval_ds, steps, batch_size):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_llmarch.load_preset(preset))
    training_args = TrainingArguments(
        output_dir=str(OUT / preset), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.1, logging_strategy="no",
        eval_strategy="steps", eval_steps=max(1, steps // EVALS), save_strategy="no", report_to=[], seed=0,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # the table and the plot report; no metric dict per evaluation
    before = trainer.evaluate()["eval_loss"]
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start  # includes the evaluations along the way, alike for all
    # train() starts a fresh log_history: it holds the evaluations along the run, not the one before.
    curve = [(0, before)] + [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    if curve[-1][0] != steps:
        curve.append((steps, trainer.evaluate()["eval_loss"]))
    return {"params": model.num_parameters(), "before": before, "after": curve[-1][1], "seconds": seconds, "curve": curve}


def write_curves(results: dict) -> Path:
    """eval_loss.csv (preset, step, eval_loss) and one plot with every preset's eval curve."""
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "eval_loss.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["preset", "step", "eval_loss"])
        writer.writerows((preset, step, loss) for preset, r in results.items() for step, loss in r["curve"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for preset, r in sorted(results.items(), key=lambda item: item[1]["after"]):
        steps, losses = zip(*r["curve"])
        ax.plot(steps, losses, marker="o", markersize=3, label=f"{preset} ({r['params'] / 1e6:.2f}M)")
    ax.set(xlabel="step", ylabel="eval loss (nats/token)", title="Tiny architectures, same data and schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "eval_loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--presets", nargs="+", default=None, help=f"default: those of {CANDIDATES} that exist")
    args = parser.parse_args()
    presets = args.presets or [p for p in CANDIDATES if p in hf_llmarch.list_presets()]
    require_matplotlib()  # fail before training, not after it

    tokenizer = byte_tokenizer()
    train_ds, eval_ds = make_lm_datasets(load_text(), tokenizer, block_size=128)
    eval_ds = Subset(eval_ds, range(min(64, len(eval_ds))))  # the same eval blocks for everyone

    results = {}
    for preset in presets:
        print(f"training {preset} for {args.steps} steps ...", flush=True)
        results[preset] = train_one(preset, train_ds, eval_ds, args.steps, args.batch_size)

    print(f"\n{'preset':<14}{'params':>10}{'eval loss start':>17}{'end':>8}{'ppl':>8}{'train s':>9}")
    for preset, r in sorted(results.items(), key=lambda item: item[1]["after"]):
        print(f"{preset:<14}{r['params']:>10,}{r['before']:>17.3f}{r['after']:>8.3f}"
              f"{math.exp(r['after']):>8.2f}{r['seconds']:>9.1f}")
    print(f"\neval loss curves: {write_curves(results)}")


if __name__ == "__main__":
    main()
