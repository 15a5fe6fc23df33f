"""Launched by test_ddp.py with `torchrun --nproc_per_node 2`: Trainer DDP on CPU (gloo).
Writes each rank's losses and a parameter checksum to OUT/rank{N}.json."""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, Trainer, TrainingArguments

import hf_llmarch
from hf_llmarch.data import MLMCollator, PrefixLMCollator, PrefixToSeq2SeqCollator

# Run as a script by torchrun: make the tests' shared helpers importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import CPU_TRAINING, RepeatTask, logged_losses  # noqa: E402


def _model_and_collator(preset: str):
    """`<preset>` trains as a causal LM; an encoder preset as a masked LM; an encoder-decoder preset on
    the prefix-to-target split (RedLLM's objective); `<preset>:prefix` as a prefix LM (the first half of
    each row is its bidirectional prefix)."""
    preset, _, topology = preset.partition(":")
    fields = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64)
    if topology == "prefix":
        fields["attention_mask_kind"] = "prefix"
    config = hf_llmarch.load_preset(preset, **fields)
    if config.is_encoder_decoder:
        return AutoModelForSeq2SeqLM.from_config(config), PrefixToSeq2SeqCollator(pad_token_id=config.pad_token_id, eos_token_id=256)
    if config.attention_mask_kind == "bidirectional":
        collator = MLMCollator(mask_token_id=255, pad_token_id=config.pad_token_id, vocab_size=250)
        return AutoModelForMaskedLM.from_config(config), collator
    collator = PrefixLMCollator(pad_token_id=0, prefix_fraction=0.5) if topology == "prefix" else None
    return AutoModelForCausalLM.from_config(config), collator


def main(out_dir: str, preset: str):
    torch.manual_seed(0)
    model, collator = _model_and_collator(preset)
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "trainer"),
        max_steps=20,
        per_device_train_batch_size=4,
        ddp_backend="gloo",
        remove_unused_columns=False,
        **CPU_TRAINING,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RepeatTask(), data_collator=collator)
    trainer.train()
    rank = trainer.args.process_index
    result = {
        "world_size": trainer.args.world_size,
        "losses": logged_losses(trainer),
        "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    # Both ranks have written their results; leave without tearing gloo down. Exiting with the group
    # alive can abort a rank ("terminate called without an active exception"), and destroy_process_group
    # once hung a rank at exit for the whole torchrun timeout. os._exit runs no teardown at all.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
