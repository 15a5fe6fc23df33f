"""Convert a transformers llama / mistral / qwen2 / qwen3 / gpt2 checkpoint to hf_llmarch.

    python conversion/from_hf.py SRC --out DST [--dtype bfloat16]

Same as `llmarch convert --from-hf SRC --out DST`; tokenizer files in SRC are copied along.
"""

import argparse
import sys
from pathlib import Path

# Let the script run from a source checkout that is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_llmarch.convert import save_from_hf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="transformers checkpoint directory (config.json + weights)")
    parser.add_argument("--out", required=True, help="output directory for the hf_llmarch checkpoint")
    parser.add_argument("--dtype", default=None, help="e.g. float32 or bfloat16 (default: as stored)")
    args = parser.parse_args(argv)
    try:
        out = save_from_hf(args.src, args.out, dtype=args.dtype)
    except ValueError as err:  # a checkpoint or config we cannot convert: say why, no traceback
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
