"""LoRA fine-tuning with PEFT on PEFT's default target modules, then merging the adapters.

    python examples/lora_finetune.py --model runs/pretrain --steps 100

`import hf_llmarch` registers default LoRA targets (q/k/v/o and the MLP projections) for its
model types, so `LoraConfig` needs no `target_modules`. Without `--model` a tiny llama is
pretrained for a few steps first, so the example runs on its own.
"""

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

import hf_llmarch  # registers the model types and PEFT's default LoRA targets
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets


def train(model, train_ds, eval_ds, steps, lr, out):
    """Trainer for `steps` steps; returns the eval loss before and after."""
    training_args = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=max(1, steps // 5),
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    return before, trainer.evaluate()["eval_loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved hf_llmarch model (default: pretrain one briefly)")
    parser.add_argument("--steps", type=int, default=100, help="LoRA steps")
    parser.add_argument("--pretrain-steps", type=int, default=150, help="pretraining steps when --model is not given")
    parser.add_argument("--out", default="runs/lora")
    args = parser.parse_args()

    tokenizer = byte_tokenizer()
    text = load_text(max_chars=400_000)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_llmarch.load_preset("llama-tiny"))
        train(model, *make_lm_datasets(text, tokenizer, block_size=128), steps=args.pretrain_steps, lr=2e-3, out=args.out)

    # The fine-tuning task: the same kind of prose in a new style, SHOUTED IN CAPITALS.
    style_train, style_eval = make_lm_datasets(text[-100_000:].upper(), tokenizer, block_size=128, eval_fraction=0.1)

    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16))
    peft_model.print_trainable_parameters()
    before, after = train(peft_model, style_train, style_eval, steps=args.steps, lr=5e-3, out=args.out)
    print(f"eval loss on the new style: {before:.3f} -> {after:.3f}")

    # Fold the adapters into the weights: the result is a plain model with unchanged outputs.
    peft_model.eval()
    inputs = tokenizer(["RETURN THE "], return_tensors="pt").to(peft_model.device)
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()
        assert torch.allclose(adapted, merged(**inputs).logits, atol=1e-4), "merging changed the outputs"
        ids = merged.generate(**inputs, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print("merged model says:", repr(tokenizer.decode(ids[0], skip_special_tokens=True)))

    merged.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved the merged model to {args.out}")


if __name__ == "__main__":
    main()
