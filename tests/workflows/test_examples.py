"""Every script in examples/ runs as a user would run it (tiny step counts) and does what it
claims, checked from its output files and printed numbers; the Hub upload path works against a
stand-in for `HfApi` that keeps the real method signatures, and fails in one line without a network."""

import ast
import csv
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from torch.utils.data import Subset
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

import hf_llmarch
from hf_llmarch.data import byte_tokenizer, load_text, make_lm_datasets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _run_example(name: str, *args: str, cwd: Path) -> str:
    proc = _run(name, *args, cwd=cwd)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _losses(pattern: str, out: str) -> tuple[float, float]:
    """The (before, after) pair an example prints as `<pattern> A -> B`."""
    match = re.search(pattern + r" ([\d.]+) -> ([\d.]+)", out)
    assert match, f"no {pattern!r} line in:\n{out}"
    return float(match[1]), float(match[2])


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> tuple[Path, str]:
    """pretrain.py's output folder and printed output."""
    work = tmp_path_factory.mktemp("examples")
    out = _run_example("pretrain.py", "--steps", "8", "--batch-size", "4", "--out", "pre", cwd=work)
    assert "saved to pre" in out
    return work / "pre", out


@pytest.fixture(scope="module")
def pretrained(pretrain_run) -> Path:
    return pretrain_run[0]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """An untrained llama-tiny whose greedy tokens depend on the whole context, so a padding bug shows
    (at the default init scale it just repeats the last token, padded or not)."""
    path = tmp_path_factory.mktemp("random") / "model"
    torch.manual_seed(0)
    config = hf_llmarch.load_preset("llama-tiny", initializer_range=0.2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@torch.no_grad()
def _eval_loss(model, blocks: int = 64) -> float:
    """pretrain.py's eval loss: the first `blocks` held-out 128-token blocks of the embedded corpus."""
    _, eval_ds = make_lm_datasets(load_text(), byte_tokenizer(), block_size=128)
    batch = default_data_collator(list(Subset(eval_ds, range(blocks))))
    return model.eval()(**batch).loss.item()


def test_pretrain_lowers_the_loss_and_saves_the_trained_model(pretrain_run):
    path, out = pretrain_run
    before, after = _losses("eval loss", out)
    assert after < before - 0.05
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llmarch_dense"
    assert AutoTokenizer.from_pretrained(path).decode([104, 105]) == "hi"
    # The reloaded weights are the trained ones: they reproduce the printed final eval loss.
    assert _eval_loss(model) == pytest.approx(after, abs=1e-3)


def _greedy_rows(out: str) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs of generate.py's greedy section: `'prompt' -> 'text'` lines."""
    section = out.split("--- greedy ---\n")[1].split("\n\n")[0]
    return [tuple(ast.literal_eval(part) for part in line.split(" -> ", 1)) for line in section.splitlines()]


def test_generate_left_padded_batch_equals_each_prompt_alone(random_model, tmp_path):
    out = _run_example("generate.py", "--model", str(random_model), "--max-new-tokens", "8", cwd=tmp_path)
    for strategy in ("greedy", "sampling", "beam search"):
        assert f"--- {strategy}" in out
    rows = _greedy_rows(out)
    assert len(rows) == 3 and len({len(prompt) for prompt, _ in rows}) > 1  # the batch really was padded
    model = AutoModelForCausalLM.from_pretrained(random_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_model)
    for prompt, batch_text in rows:
        inputs = tokenizer(prompt, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == batch_text


def test_lora_example_adapts_merges_and_saves(pretrained, tmp_path):
    out = _run_example("lora_finetune.py", "--model", str(pretrained), "--steps", "4", "--out", "lora", cwd=tmp_path)
    assert "trainable params" in out
    before, after = _losses("eval loss on the new style:", out)
    assert after < before
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora").eval()
    assert not any("lora" in name for name in merged.state_dict())  # adapters folded in
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lora")
    inputs = tokenizer(["RETURN THE "], return_tensors="pt")
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(pretrained)(**inputs).logits
        assert (merged(**inputs).logits - base_logits).abs().max() > 1e-3  # the adapter changed the outputs
        ids = merged.generate(**inputs, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    # The example checked merged == adapted logits; the saved merge must say what the in-memory one said.
    said = ast.literal_eval(out.split("merged model says: ")[1].splitlines()[0])
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == said


def test_compare_architectures_example(tmp_path):
    out = _run_example("compare_architectures.py", "--steps", "4", "--batch-size", "2", cwd=tmp_path)
    table = out.split("eval loss start")[-1].split("eval loss curves")[0].splitlines()[1:]
    rows = {line.split()[0]: line.split()[1:] for line in table if line.strip()}
    expected = {"llama-tiny", "gpt2-tiny", "mixtral-tiny", "hybrid-tiny", "jamba-tiny", "mamba-tiny", "mamba2-tiny", "s4d-tiny"}
    assert set(rows) == expected
    curves = list(csv.DictReader((tmp_path / "runs/compare/eval_loss.csv").open()))
    for preset in expected:  # step 0 and the last step, per preset, in the csv the plot is drawn from
        steps = [int(row["step"]) for row in curves if row["preset"] == preset]
        assert steps == [0, 1, 2, 3, 4], (preset, steps)  # 4 steps, evaluated every 4 // 5 -> 1 step
    assert (tmp_path / "runs/compare/eval_loss.png").stat().st_size > 10_000
    for preset, (params, start, end, ppl, seconds) in rows.items():
        numbers = [float(value) for value in (start, end, ppl, seconds)]
        assert int(params.replace(",", "")) > 0 and all(map(math.isfinite, numbers)), preset
        assert float(end) < float(start), preset  # every architecture learned something


def test_push_to_hub_dry_run_stages_a_loadable_folder(pretrained, tmp_path):
    args = ["--model", str(pretrained), "--repo-id", "me/tiny", "--dry-run", "--out", "stage"]
    out = _run_example("push_to_hub.py", *args, cwd=tmp_path)
    assert "would upload to me/tiny" in out and "max |logit diff| 0.0e+00" in out
    staged = {p.name for p in (tmp_path / "stage").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= staged


# Offline mode, and a Hub endpoint where nothing listens (port 9, local: no real host is contacted).
NO_NETWORK = {
    "offline mode": {"HF_HUB_OFFLINE": "1"},
    "connection refused": {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"},
}


@pytest.mark.parametrize("network", NO_NETWORK)
def test_push_to_hub_without_network_fails_in_one_line(pretrained, tmp_path, network):
    env = {**NO_NETWORK[network], "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}  # never send a real token
    proc = _run("push_to_hub.py", "--model", str(pretrained), "--repo-id", "me/tiny", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: could not push") and "me/tiny" in lines[0] and "--dry-run" in lines[0]


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


def test_compare_topologies_example(tmp_path):
    # One thread: a tiny model on threads that the rest of the suite also wants is mostly spin-waiting.
    args = ["--tiny", "--threads", "1", "--plot", "topologies.png", "--json", "topologies.json"]
    out = _run_example("compare_topologies.py", *args, cwd=tmp_path)
    assert "token budget: 4 steps x 2 x 16 = 128 tokens per model" in out
    table = out.split("\nmodel ")[1].split("RedLLM cache (accounting)")[0].splitlines()[1:]
    assert [line[:18].strip() for line in table] == ["causal decoder", "prefix decoder", "RedLLM (enc-dec)"]
    verdicts = re.findall(r"survey claim: .+\n  measured: .+\n  -> (holds|does not hold|undecided) at this scale", out)
    assert len(verdicts) == 4, out
    assert (tmp_path / "topologies.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "topologies.json").read_text())
    results = report["results"]
    params = [r["params"] for r in results.values()]
    assert max(params) / min(params) < 1.05  # equal size, as the comparison claims
    for kind, r in results.items():
        assert r["cache_bytes_per_token"] == r["accounting_bytes_per_token"] > 0, kind
        assert [tokens for tokens, _ in r["curve"]] == [0, 32, 64, 96, 128], kind  # 2 x 16 tokens a step
        assert all(math.isfinite(loss) for loss in r["extrapolation"].values()) and r["tok_s"] > 0, kind
    # The decoder's K/V in 4 layers, RedLLM's in 2 self + 2 cross layers: half per sequence token.
    assert results["redllm"]["cache_bytes_per_token"] * 2 == results["decoder"]["cache_bytes_per_token"]
