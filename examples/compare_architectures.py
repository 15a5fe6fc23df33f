"""Train several tiny architectures on the same data for the same steps and compare their losses.

    python examples/compare_architectures.py --steps 100

Every preset gets the same seed, batches, optimizer and schedule, so the table compares the
architectures (at roughly equal size) and nothing else.
"""

import argparse
import math
import time

import torch
from torch.utils.data import Subset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets

CANDIDATES = ["llama-tiny", "gpt2-tiny", "hybrid-tiny"]


def train_one(preset, train_ds, eval_ds, steps, batch_size):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_llmarch.load_preset(preset))
    training_args = TrainingArguments(
        output_dir=f"runs/compare/{preset}", max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.1, logging_strategy="no",
        save_strategy="no", report_to=[], seed=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator)
    before = trainer.evaluate()["eval_loss"]
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = trainer.evaluate()["eval_loss"]
    return {"params": model.num_parameters(), "before": before, "after": after, "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--presets", nargs="+", default=None, help=f"default: those of {CANDIDATES} that exist")
    args = parser.parse_args()
    presets = args.presets or [p for p in CANDIDATES if p in hf_llmarch.list_presets()]

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


if __name__ == "__main__":
    main()
