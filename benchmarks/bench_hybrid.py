"""Hybrid suite: retention/attention hybrid vs dense vs retention-only at several contexts.
Extra flags pass through, e.g. `python benchmarks/bench_hybrid.py --contexts 256,1024,4096`."""

import sys

from hf_llmarch.bench import main

if __name__ == "__main__":
    sys.exit(main(["--suite", "hybrid", *sys.argv[1:]]))
