"""Upcycle a dense checkpoint (hf_llmarch, or transformers llama / mistral / qwen2 / qwen3) into an MoE.

    python conversion/upcycle.py SRC --experts 8 --top-k 2 [--granularity 1] --out DST

Same as `llmarch upcycle SRC --experts 8 --top-k 2 --out DST`; tokenizer files in SRC are copied
along. The upcycled model computes the dense model's function at step 0 (see
hf_llmarch/convert/upcycle.py for the rule with fine-grained experts).
"""

import sys
from pathlib import Path

# Let the script run from a source checkout that is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_llmarch.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["upcycle", *sys.argv[1:]]))
