"""Every script in examples/ runs as a user would run it (tiny step counts), and the Hub upload
path works against a stand-in for `HfApi` that keeps the real method signatures."""

import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_llmarch  # noqa: F401  (registers the model types for the in-process loads)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("examples")
    out = _run_example("pretrain.py", "--steps", "3", "--batch-size", "4", "--out", "pre", cwd=work)
    assert "eval loss" in out and "saved to pre" in out
    return work / "pre"


def test_pretrain_saves_a_reloadable_model(pretrained):
    model = AutoModelForCausalLM.from_pretrained(pretrained)
    assert model.config.model_type == "llmarch_dense"
    assert AutoTokenizer.from_pretrained(pretrained).decode([104, 105]) == "hi"


def test_generate_example(pretrained, tmp_path):
    out = _run_example("generate.py", "--model", str(pretrained), "--max-new-tokens", "6", cwd=tmp_path)
    for strategy in ("greedy", "sampling", "beam search"):
        assert f"--- {strategy}" in out


def test_lora_example_merges_and_saves(pretrained, tmp_path):
    out = _run_example("lora_finetune.py", "--model", str(pretrained), "--steps", "2", "--out", "lora", cwd=tmp_path)
    assert "trainable params" in out and "merged model says" in out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    assert not any("lora" in name for name in merged.state_dict())  # adapters folded in


def test_compare_architectures_example(tmp_path):
    out = _run_example("compare_architectures.py", "--steps", "2", "--batch-size", "2", cwd=tmp_path)
    for preset in ("llama-tiny", "gpt2-tiny", "hybrid-tiny"):
        assert preset in out.split("eval loss start")[-1]  # one table row each


def test_push_to_hub_dry_run_stages_a_loadable_folder(pretrained, tmp_path):
    out = _run_example(
        "push_to_hub.py", "--model", str(pretrained), "--repo-id", "me/tiny", "--dry-run", "--out", "stage", cwd=tmp_path
    )
    assert "would upload to me/tiny" in out and "max |logit diff| 0.0e+00" in out
    staged = {p.name for p in (tmp_path / "stage").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= staged


class FakeHub:
    """Records calls and copies uploads into `root/<repo_id>`; each call is first bound to the
    real `HfApi` method, so a renamed or missing argument fails here as it would on the Hub."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def _check(self, method: str, *args, **kwargs):
        inspect.signature(getattr(HfApi, method)).bind(None, *args, **kwargs)
        self.calls.append(method)

    def create_repo(self, *args, **kwargs):
        self._check("create_repo", *args, **kwargs)
        return SimpleNamespace(repo_id=args[0] if args else kwargs["repo_id"])

    def upload_folder(self, *args, **kwargs):
        self._check("upload_folder", *args, **kwargs)
        shutil.copytree(kwargs["folder_path"], self.root / kwargs["repo_id"], dirs_exist_ok=True)
        return SimpleNamespace(commit_url=f"fake://{kwargs['repo_id']}/commit/1")


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_uploads_model_tokenizer_and_card_in_one_commit(pretrained, tmp_path):
    hub = FakeHub(tmp_path / "hub")
    url = _load_example("push_to_hub.py").publish(str(pretrained), "me/tiny", private=True, api=hub)
    assert url == "fake://me/tiny/commit/1" and hub.calls == ["create_repo", "upload_folder"]
    remote = tmp_path / "hub" / "me" / "tiny"
    card = (remote / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: transformers\n") and 'from_pretrained("me/tiny")' in card
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(pretrained)(ids).logits
        actual = AutoModelForCausalLM.from_pretrained(remote)(ids).logits
    assert torch.equal(expected, actual)
    assert AutoTokenizer.from_pretrained(remote).pad_token == "<|pad|>"
