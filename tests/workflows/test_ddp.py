"""A real two-process DDP run on CPU through torchrun (gloo), as a user would launch it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("preset", ["llama-tiny", "hybrid-tiny"])
def test_two_process_ddp_trainer(tmp_path, preset):
    script = Path(__file__).with_name("ddp_train.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), preset]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # DDP keeps replicas identical: both ranks end with the same weights.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0], losses
