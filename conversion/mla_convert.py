"""Turn an MHA/GQA checkpoint (ours, or a native Llama / Mistral / Qwen2 / Qwen3) into MLA.

    python conversion/mla_convert.py SRC --out DST [--kv-lora-rank R] [--rope-heads M]

Same as `llmarch mla-convert SRC --out DST`. Without the two options the conversion is exact (the
same logits) and the cache the same size; smaller values shrink the cache and report the error.
"""

import sys
from pathlib import Path

# Let the script run from a source checkout that is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_llmarch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["mla-convert", *sys.argv[1:]]))
