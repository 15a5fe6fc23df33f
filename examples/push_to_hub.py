"""Publish a saved model on the Hugging Face Hub, with its tokenizer and hf_llmarch model card.

    python examples/push_to_hub.py --model runs/pretrain --repo-id you/llama-tiny-docstrings
    python examples/push_to_hub.py --model runs/pretrain --repo-id you/x --dry-run --out runs/hub_preview

The folder goes up in one commit through `HfApi.upload_folder`, README.md included.
(`model.push_to_hub()` also works for every hf_llmarch model, but it writes the Hub's generic
README over ours, so the card would need a second commit.) `--dry-run` writes the exact folder that
would be uploaded and reloads it, without touching the network. Whoever loads the pushed model
runs `import hf_llmarch` first; the card's usage snippet says so. When the Hub cannot be reached
(no network, offline mode, no login) the script says so in one line and exits with status 1.
"""

import argparse
import contextlib
import importlib
import sys
import tempfile
from pathlib import Path

import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.card import render_card


def stage(model_dir: str, repo_id: str, folder: Path) -> Path:
    """Write model, tokenizer and card (README.md) into `folder`: what the Hub will hold."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    model.save_pretrained(folder)
    card = Path(model_dir) / "README.md"  # `llmarch card` or `llmarch demo` may have written one
    if card.exists():
        text = card.read_text(encoding="utf-8")
    else:
        metrics = {"num_parameters": model.num_parameters(), "model_path": repo_id}
        text = render_card(model.config, metrics, title=repo_id.split("/")[-1])
    (folder / "README.md").write_text(text, encoding="utf-8")
    return folder


def check_reload(model_dir: str, folder: Path) -> float:
    """Max |logit difference| between the source model and the staged folder."""
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        source = AutoModelForCausalLM.from_pretrained(model_dir).eval()(ids).logits
        staged = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
    return (source - staged).abs().max().item()


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a failed Hub call raises: an HTTP error status, offline mode (a ConnectionError), or a
    transport error of the HTTP client, httpx2 for huggingface_hub 2.x and httpx for 1.x."""
    errors = [HfHubHTTPError, ConnectionError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(client).TransportError)
    return tuple(errors)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else 'no details'}"


def publish(model_dir: str, repo_id: str, private: bool, api=None) -> str:
    """Create the repo if needed and upload the staged folder in one commit; returns the commit URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(model_dir, repo_id, Path(tmp))
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Upload hf_llmarch model")
    return str(getattr(commit, "commit_url", commit))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved hf_llmarch model folder (with its tokenizer)")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, e.g. you/llama-tiny-docstrings")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="stage the upload in --out instead of pushing")
    parser.add_argument("--out", default="runs/hub_preview", help="where --dry-run stages the folder")
    args = parser.parse_args()

    if args.dry_run:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        stage(args.model, args.repo_id, folder)
        print(f"would upload to {args.repo_id}:")
        for path in sorted(folder.iterdir()):
            print(f"  {path.name:<28} {path.stat().st_size:>12,} bytes")
        print(f"reloaded from {folder}: max |logit diff| {check_reload(args.model, folder):.1e}")
        return 0
    try:
        print(f"pushed: {publish(args.model, args.repo_id, args.private)}")
    except _hub_errors() as err:
        print(f"error: could not push to the Hub repo {args.repo_id} ({_first_line(err)}); "
              "--dry-run stages the upload locally, without the network", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
