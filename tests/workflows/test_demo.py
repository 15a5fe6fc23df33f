"""The end-to-end demo (`llmarch demo`) and the model card it writes."""

import csv
import importlib
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_llmarch
from hf_llmarch import demo
from hf_llmarch.accounting import count_parameters
from hf_llmarch.card import render_card, write_card

# Small enough for well under 90 s on two cores, long enough for the loss to fall clearly.
TINY_RUN = ["--steps", "20", "--lora-steps", "5", "--block-size", "64", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory, monkeypatch):
    # Keep the generated corpus out of the user's ~/.cache.
    monkeypatch.setenv("HF_LLMARCH_CACHE", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def _read_loss_curve(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_end_to_end(tmp_path, capsys):
    out, cards = tmp_path / "run", tmp_path / "cards"
    assert demo.main([*TINY_RUN, "--out", str(out), "--cards-dir", str(cards)]) == 0
    printed = capsys.readouterr().out
    assert "logits match" in printed and "LoRA adapters:" in printed

    rows = _read_loss_curve(out / "loss_curve.csv")
    evals = [float(r["eval_loss"]) for r in rows if r["eval_loss"]]
    assert len(evals) == 2 and evals[1] < evals[0] - 0.5  # before/after pretraining
    assert len([r for r in rows if r["train_loss"]]) >= 5

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert model.config.model_type == "llmarch_dense"
    inputs = tokenizer(["Return the", "If"], return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)

    card = (cards / "llama-tiny-demo.md").read_text(encoding="utf-8")
    assert "llama-tiny" in card and f"{model.num_parameters():,}" in card
    assert f"{evals[1]:.4f}" in card and "import hf_llmarch" in card
    assert "$" not in card  # every placeholder was filled
    assert (out / "model" / "README.md").read_text(encoding="utf-8") == card  # published with the folder


def test_demo_with_local_text_file(tmp_path):
    text = "\n\n".join(
        f"Document {i}: the function returns {i * 7 % 13} when the flag is {'set' if i % 2 else 'clear'}."
        for i in range(200)
    )
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    args = ["--dataset", str(path), "--steps", "3", "--lora-steps", "2", "--block-size", "32", "--batch-size", "4"]
    assert demo.main([*args, "--out", str(tmp_path / "run"), "--cards-dir", str(tmp_path / "cards")]) == 0
    card = (tmp_path / "cards" / "llama-tiny-demo.md").read_text(encoding="utf-8")
    assert "notes.txt" in card


def _force_offline(monkeypatch):
    # The libraries read these variables at import time, so patch the loaded values too.
    for module in ("huggingface_hub.constants", "datasets.config"):
        try:
            monkeypatch.setattr(importlib.import_module(module), "HF_HUB_OFFLINE", True)
        except ImportError:
            pass


def test_demo_unknown_dataset_fails_clearly(tmp_path, monkeypatch, capsys):
    _force_offline(monkeypatch)
    name = "no-such-user/no-such-dataset-xyz"
    status = demo.main(["--dataset", name, "--out", str(tmp_path / "run"), "--cards-dir", str(tmp_path / "cards")])
    assert status == 2
    err = capsys.readouterr().err
    assert name in err and "local text file" in err
    assert not (tmp_path / "cards").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "no-such-preset"], "llama-tiny"),  # the error lists the available presets
        (["--preset", "llama3-8b"], "--force"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_demo_rejects_bad_options(tmp_path, capsys, argv, message):
    assert demo.main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


METRICS = {
    "num_parameters": 771_456,
    "training_data": "embedded corpus",
    "steps": 600,
    "eval_loss_before": 5.5612,
    "eval_loss_after": 1.4321,
    "train_time_s": 95.0,
    "lora_steps": 60,
    "lora_loss_before": 3.25,
    "lora_loss_after": 1.75,
    "model_path": "runs/demo/model",
}


def test_render_card_contains_key_figures(tmp_path):
    config = hf_llmarch.load_preset("llama-tiny")
    text = render_card(config, METRICS, title="llama-tiny demo", notes="Made in a test.")
    n_params = count_parameters(config)["total"]
    for expected in (
        "# llama-tiny demo",
        "llmarch_dense",
        "(attn/mlp)x4",
        f"{n_params:,}",
        "600",
        "5.5612 → 1.4321",
        f"{torch.tensor(1.4321).exp().item():.2f}",  # final perplexity
        "60 steps",
        "3.2500 → 1.7500",
        "import hf_llmarch",
        'AutoModelForCausalLM.from_pretrained("runs/demo/model")',
        "## Limitations",
        "Made in a test.",
    ):
        assert expected in text, expected
    assert "$" not in text
    path = write_card(tmp_path / "sub" / "card.md", text)
    assert path.read_text(encoding="utf-8") == text


def test_render_card_without_accounting_uses_measured_count(monkeypatch):
    monkeypatch.setitem(sys.modules, "hf_llmarch.accounting", None)  # makes the import fail
    config = hf_llmarch.load_preset("gpt2-tiny")
    text = render_card(config, {"num_parameters": 123_456}, title="t")
    assert "123,456" in text and "n/a" in text
