"""The end-to-end demo (`llmarch demo`) and the model card it writes."""

import csv
import importlib
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

import hf_llmarch
from hf_llmarch import demo
from hf_llmarch.accounting import count_parameters
from hf_llmarch.card import render_card, write_card

REPO = Path(__file__).resolve().parents[2]

# Small enough for well under 90 s on two cores, long enough for the loss to fall clearly.
TINY_RUN = ["--steps", "20", "--lora-steps", "5", "--block-size", "64", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory, monkeypatch):
    # Keep the generated corpus out of the user's ~/.cache.
    monkeypatch.setenv("HF_LLMARCH_CACHE", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def _read_loss_curve(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out is relative: runs/demo
    assert demo.main(TINY_RUN) == 0
    printed = capsys.readouterr().out
    assert "LoRA adapters:" in printed
    assert "all 3 greedy rows equal their prompt generated alone" in printed
    assert printed.count("logits match the in-memory model") == 2  # the model and the adapter

    # Everything it wrote is under runs/demo: no tracked file (model_cards/, ...) is touched.
    out = tmp_path / "runs" / "demo"
    assert [p.relative_to(tmp_path) for p in tmp_path.iterdir()] == [Path("runs")]
    assert list((tmp_path / "runs").iterdir()) == [out]

    rows = _read_loss_curve(out / "loss_curve.csv")
    evals = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r["eval_loss"]]
    assert [step for step, _ in evals] == list(range(0, 21, 2))  # periodic, from step 0 to the last
    assert evals[-1][1] < evals[0][1] - 0.5
    assert len([r for r in rows if r["train_loss"]]) >= 5
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # runs/demo/model is the pretrained base model; the LoRA adapter is beside it.
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert model.config.model_type == "llmarch_dense"
    assert not any("lora" in name for name in model.state_dict())
    n_params = model.num_parameters()
    _, eval_ds, _, _ = demo.prepare_data(SimpleNamespace(dataset=None, block_size=64), tokenizer)
    with torch.no_grad():  # it scores exactly the final pretraining eval loss: not LoRA-merged
        loss = model(**default_data_collator(list(eval_ds))).loss.item()
        assert loss == pytest.approx(evals[-1][1], abs=1e-4)
        inputs = tokenizer(demo.PROMPTS, return_tensors="pt", padding=True)
        base_logits = model(**inputs).logits
        adapted = PeftModel.from_pretrained(model, out / "lora-adapter").eval()  # wraps `model` in place
        assert (adapted(**inputs).logits - base_logits).abs().max() > 1e-3  # the trained adapter loads

    card = (out / "model" / "README.md").read_text(encoding="utf-8")  # published with the folder
    assert "llama-tiny" in card and f"{n_params:,}" in card
    assert f"{evals[-1][1]:.4f}" in card and "import hf_llmarch" in card
    assert 'from_pretrained("runs/demo/model")' in card and "`runs/demo/lora-adapter`" in card
    assert "$" not in card  # every placeholder was filled


def test_committed_example_card_holds_no_machine_paths():
    card = (REPO / "model_cards" / "llama-tiny-demo.md").read_text(encoding="utf-8")
    assert not re.search(r"/tmp/|/home/|/Users/|/work/|[A-Za-z]:\\\\", card)
    assert re.findall(r'from_pretrained\("([^"]+)"\)', card) == ["runs/demo/model"] * 2


def test_demo_with_local_text_file(tmp_path):
    text = "\n\n".join(
        f"Document {i}: the function returns {i * 7 % 13} when the flag is {'set' if i % 2 else 'clear'}."
        for i in range(200)
    )
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    args = ["--dataset", str(path), "--steps", "3", "--lora-steps", "2", "--block-size", "32", "--batch-size", "4"]
    assert demo.main([*args, "--out", str(tmp_path / "run")]) == 0
    card = (tmp_path / "run" / "model" / "README.md").read_text(encoding="utf-8")
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
    status = demo.main(["--dataset", name, "--out", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert name in err and "local text file" in err
    assert not (tmp_path / "run").exists()


def test_demo_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert demo.main(["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # failed before any training


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
    "lora_adapter": "runs/demo/lora-adapter",
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
        "adapter saved in `runs/demo/lora-adapter`",
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
