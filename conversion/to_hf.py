"""Export an hf_llmarch dense checkpoint as a native transformers model.

    python conversion/to_hf.py SRC --out DST [--target llama|mistral|qwen2|qwen3|gpt2]

Same as `llmarch export --to-hf SRC --out DST`. Without --target the model type it was converted
from is used, else the closest one is inferred; tokenizer files in SRC are copied along.
"""

import argparse
import sys
from pathlib import Path

# Let the script run from a source checkout that is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_llmarch.convert import ADAPTERS, save_to_hf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="hf_llmarch checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory for the native checkpoint")
    parser.add_argument("--target", choices=sorted(ADAPTERS), default=None, help="native model type to write")
    args = parser.parse_args(argv)
    try:
        out = save_to_hf(args.src, args.out, target=args.target)
    except ValueError as err:  # a config the target cannot express: say why, no traceback
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
