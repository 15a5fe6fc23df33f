"""Dense suite: `llmarch_dense` vs transformers' LlamaForCausalLM. Extra flags pass through,
e.g. `python benchmarks/bench_dense.py --device cpu --json dense.json --markdown`."""

import sys

from hf_llmarch.bench import main

if __name__ == "__main__":
    sys.exit(main(["--suite", "dense", *sys.argv[1:]]))
