"""Launched by test_ddp.py with `torchrun --nproc_per_node 2`: Trainer DDP on CPU (gloo).
Writes each rank's losses and a parameter checksum to OUT/rank{N}.json."""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import hf_llmarch


class Motifs(torch.utils.data.Dataset):
    def __init__(self, n=64, length=32):
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 200, (n, 4), generator=g).repeat(1, length // 4)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def main(out_dir: str, preset: str):
    torch.manual_seed(0)
    config = hf_llmarch.load_preset(preset, hidden_size=64, intermediate_size=128, moe_intermediate_size=64)
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "trainer"),
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    trainer = Trainer(model=model, args=args, train_dataset=Motifs())
    trainer.train()
    rank = trainer.args.process_index
    result = {
        "world_size": trainer.args.world_size,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
