"""Text generation with `generate()`: greedy, sampling and beam search on a left-padded batch.

    python examples/generate.py --model runs/pretrain
    python examples/generate.py --steps 150        # pretrain a tiny llama first, then generate

Decoder-only models must be padded on the left for batched generation, so that every prompt
ends right where the new tokens begin; the byte tokenizer pads on the left by default.
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets

PROMPTS = ["Return the", "If the file does not exist,", "This class"]


def quick_pretrain(preset: str, steps: int):
    """A tiny model trained for `steps` steps, so the generations are more than noise."""
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_llmarch.load_preset(preset))
    train_ds, _ = make_lm_datasets(load_text(), tokenizer, block_size=128)
    training_args = TrainingArguments(
        output_dir="runs/generate", max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-3,
        lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=max(1, steps // 5),
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
    )
    Trainer(model=model, args=training_args, train_dataset=train_ds, data_collator=default_data_collator).train()
    return model, tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved hf_llmarch model folder (default: pretrain one)")
    parser.add_argument("--preset", default="llama-tiny", help="preset to pretrain when --model is not given")
    parser.add_argument("--steps", type=int, default=150, help="pretraining steps when --model is not given")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args()

    if args.model:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    else:
        model, tokenizer = quick_pretrain(args.preset, args.steps)
    model.eval()
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
    print("left-padded batch:\n", inputs["input_ids"].cpu())

    strategies = {
        "greedy": dict(do_sample=False),
        "sampling (T=0.8, top-p 0.95)": dict(do_sample=True, temperature=0.8, top_p=0.95),
        "beam search (4 beams, no repeated 3-grams)": dict(num_beams=4, no_repeat_ngram_size=3, early_stopping=True),
    }
    for name, kwargs in strategies.items():
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
            )
        print(f"\n--- {name} ---")
        # Everything after the (padded) prompt is new; decode it on its own.
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        for prompt, text in zip(PROMPTS, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            print(f"{prompt!r} -> {text!r}")


if __name__ == "__main__":
    main()
