"""`llmarch bench --suite recall` end to end at a tiny setting: a row per mixer with accuracies in
[0, 1], an unregistered mixer reported as skipped with its reason, the plot and the claim line.
How well each mixer recalls is measured by the suite itself, never asserted here."""

import importlib.util
import json

import pytest

from hf_llmarch import bench
from hf_llmarch.bench import recall

TINY = ["--recall-seq-len", "16", "--recall-kv-pairs", "2,4", "--recall-steps", "3", "--recall-batch", "4"]


def _run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "recall.json"
    rc = bench.main(["--suite", "recall", "--device", "cpu", "--json", str(out), *TINY, *extra])
    assert rc == 0
    return json.loads(out.read_text())["suites"]["recall"]


@pytest.mark.skipif(not importlib.util.find_spec("matplotlib"), reason="--plot needs matplotlib")
def test_recall_suite(tmp_path, capsys):
    plot = tmp_path / "recall.png"
    res = _run(tmp_path, "--mixers", "attn,gated_deltanet,mamba2,no_such_mixer", "--plot", str(plot), "--markdown")
    assert res["status"] == "ok"
    assert res["columns"] == ["kv 2", "kv 4", "mean", "cache B/layer @16"]
    assert list(res["metrics"]) == ["attn", "gated_deltanet", "mamba2", "no_such_mixer"]
    for mixer in ("attn", "gated_deltanet", "mamba2"):
        values = res["metrics"][mixer]["values"]
        assert all(0.0 <= values[c] <= 1.0 for c in ("kv 2", "kv 4", "mean"))
        assert values["mean"] == pytest.approx((values["kv 2"] + values["kv 4"]) / 2)
        assert values["cache B/layer @16"] > 0
    assert res["skipped"] == {"no_such_mixer": "not in hf_llmarch.mixers.MIXER_CLASSES"}
    assert res["metrics"]["no_such_mixer"]["skipped"] == res["skipped"]["no_such_mixer"]
    assert plot.stat().st_size > 0
    out = capsys.readouterr().out
    assert "no_such_mixer (accuracy)" in out and "SKIPPED" in out and "no_such_mixer: skipped (not in" in out
    claim = res["claim"]
    assert claim.startswith("survey claim: Gated DeltaNet beats Mamba-2 on recall; measured: gated_deltanet ")
    means = [res["metrics"][m]["values"]["mean"] for m in ("gated_deltanet", "mamba2")]
    assert f"gated_deltanet {means[0]:.3f} vs mamba2 {means[1]:.3f} mean accuracy -> " in claim
    assert claim in out and claim in res["setup_text"]  # on the console and in the markdown


def test_claim_line_compares_the_two_means():
    holds = recall.claim_line({"gated_deltanet": 0.9, "mamba2": 0.5}, chance=0.01)
    assert holds == (
        "survey claim: Gated DeltaNet beats Mamba-2 on recall; measured: gated_deltanet 0.900 vs mamba2 0.500 "
        "mean accuracy -> holds at this scale"
    )
    tie = recall.claim_line({"gated_deltanet": 0.5, "mamba2": 0.5}, chance=0.01)
    assert tie.endswith("-> does not hold at this scale")
    assert "not tested" in recall.claim_line({"gated_deltanet": 0.5}, chance=0.01)
    noise = recall.claim_line({"gated_deltanet": 0.015, "mamba2": 0.01}, chance=0.01)
    assert noise.endswith("-> undecided (both under twice chance, 0.010: neither learned) at this scale")
