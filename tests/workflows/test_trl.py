"""TRL runs unchanged on our models: SFT, full and with a PEFT LoRA adapter (default targets)."""

import datasets
import pytest
import torch
from conftest import CPU_TRAINING, logged_losses, tiny_model
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from hf_llmarch.data import byte_tokenizer


def sft(model, tmp_path, config=None, **trainer_kwargs):
    texts = [f"def add_{i}(a, b):\n    return a + b\n" for i in range(64)]
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=8,
        **{"max_length": 64, **(config or {})},
        **CPU_TRAINING,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=byte_tokenizer(padding_side="right"),
        **trainer_kwargs,
    )
    trainer.train()
    return trainer, logged_losses(trainer)


@pytest.mark.parametrize("family", ["llama", "hybrid"])
def test_sft_trainer_lowers_loss(family, tmp_path):
    _, losses = sft(tiny_model(family).train(), tmp_path)
    assert losses[-1] < 0.8 * losses[0], losses


def test_sft_trainer_with_lora_trains_only_the_adapter(tmp_path):
    model = tiny_model("hybrid").train()
    frozen = model.model.layers[0].retention.q_proj.weight.detach().clone()
    trainer, losses = sft(model, tmp_path, peft_config=LoraConfig(task_type="CAUSAL_LM", r=8))
    assert losses[-1] < losses[0], losses
    trained = trainer.model
    assert any("lora_A" in n for n, p in trained.named_parameters() if p.requires_grad)
    base_q = trained.get_base_model().model.layers[0].retention.q_proj.base_layer.weight
    assert torch.equal(base_q, frozen)


@pytest.mark.parametrize("config", [{"packing": True}, {"padding_free": True, "max_length": None}], ids=["packing", "padding_free"])
def test_sft_packed_batches(config, tmp_path):
    """TRL's packed and padding-free batches put several sequences in one row; retention restarts
    its state at each (tests/models/test_packing.py proves the math), and training converges."""
    trainer, losses = sft(tiny_model("hybrid").train(), tmp_path, config=config)
    batch = next(iter(trainer.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).sum().item()
    assert batch["input_ids"].shape[0] == 1 and starts > 1  # one row, several sequences
    assert losses[-1] < 0.8 * losses[0], losses
