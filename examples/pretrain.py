"""Pretrain a tiny model from scratch with the transformers Trainer on the embedded corpus.

    python examples/pretrain.py --preset llama-tiny --steps 200 --out runs/pretrain

Everything after `import hf_llmarch` is ordinary transformers code.
"""

import argparse
import math

import torch
from torch.utils.data import Subset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="runs/pretrain")
    args = parser.parse_args()

    # A 258-token byte-level tokenizer: no download, and the tiny presets already match its vocabulary.
    tokenizer = byte_tokenizer()
    config = hf_llmarch.load_preset(args.preset)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    print(f"{args.preset}: {model.num_parameters():,} parameters")

    # Python standard-library docstrings, cut into 128-token blocks; 64 eval blocks keep eval fast.
    train_ds, eval_ds = make_lm_datasets(load_text(), tokenizer, block_size=128)
    eval_ds = Subset(eval_ds, range(min(64, len(eval_ds))))

    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a fraction of max_steps
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=default_data_collator,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"eval loss {before:.3f} -> {after:.3f} (perplexity {math.exp(before):.1f} -> {math.exp(after):.1f})")

    # A standard checkpoint: AutoModelForCausalLM.from_pretrained(args.out) reloads it after `import hf_llmarch`.
    trainer.save_model(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
