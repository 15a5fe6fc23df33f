"""`llmarch bench` tooling: every suite runs end to end on tiny shapes and writes sane JSON.

No timing assertions: speed is measured by benchmarks/, never by unit tests."""

import json

import pytest
import torch

from hf_llmarch import bench


def _run(tmp_path, suite: str, *extra: str) -> dict:
    out = tmp_path / f"{suite}.json"
    rc = bench.main(["--suite", suite, "--quick", "--device", "cpu", "--json", str(out), *extra])
    assert rc == 0
    results = json.loads(out.read_text())
    assert {"meta", "settings", "suites"} <= set(results)
    assert results["meta"]["device"] == "cpu" and results["meta"]["quick"] is True
    return results["suites"][suite]


def _check_metrics(res: dict, columns: list[str]):
    assert res["columns"] == columns
    for name, metric in res["metrics"].items():
        assert all(v > 0 for v in metric["values"].values() if v is not None), name
        assert metric["ratio"] is None or metric["ratio"] > 0, name
        if "goal" in metric:
            assert metric["pass"] in (True, False, None), name


def test_dense_suite(tmp_path):
    res = _run(tmp_path, "dense", "--markdown")
    assert res["status"] == "ok"
    parity = res["parity"]
    assert parity["passed"] is True and parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert parity["greedy_tokens_equal"] is True
    assert set(res["metrics"]) == {"train tokens/s", "decode tokens/s", "train peak memory", "decode peak memory"}
    _check_metrics(res, ["ours", "transformers"])
    for what in ("train tokens/s", "decode tokens/s"):
        assert all(v > 0 for v in res["metrics"][what]["values"].values())
    # Peak memory: measured in forked processes on Linux, n/a (None) elsewhere; never negative.
    for what in ("train peak memory", "decode peak memory"):
        assert all(v is None or v >= 0 for v in res["metrics"][what]["values"].values())


def test_moe_suite(tmp_path):
    res = _run(tmp_path, "moe", "--no-memory")
    if res["status"] == "skipped":
        pytest.skip(res["reason"])
    assert res["status"] == "ok"
    assert res["parity"]["passed"] is True
    assert res["parity"]["max_rel_output_diff"] <= res["parity"]["tolerance"]
    _check_metrics(res, ["ours", "mixtral-eager", "mixtral-grouped_mm"])
    assert len(res["metrics"]) == 2


def test_hybrid_suite(tmp_path):
    res = _run(tmp_path, "hybrid", "--no-memory")
    if res["status"] == "skipped":
        pytest.skip(res["reason"])
    assert res["status"] == "ok"
    _check_metrics(res, ["hybrid", "dense", "retention"])
    contexts = res["setup"]["contexts"]
    for context in contexts:
        assert set(res["metrics"][f"decode ms/token @{context}"]["values"]) == {"hybrid", "dense", "retention"}
        assert res["metrics"][f"train tokens/s @{context}"]["ratio"] > 0
    flat = res["metrics"][f"retention decode @{max(contexts)} / @{min(contexts)}"]
    assert flat["ratio"] > 0 and flat["goal"] == "< 1.1"


def test_format_table_marks_goals():
    res = {
        "title": "t",
        "status": "ok",
        "columns": ["a", "b"],
        "metrics": {
            "speed": bench._metric("tok/s", {"a": 2.0, "b": 1.0}, ("a", "b"), (">=", 1.0)),
            "memory": bench._metric("MiB", {"a": None, "b": 1.0}, ("a", "b"), ("<=", 1.05)),
        },
    }
    text = bench.format_table("x", res)
    assert "PASS" in text and "n/a" in text
    assert "| speed (tok/s) | 2.000 | 1.000 | 2.000 | a/b | >= 1.0 | PASS |" in bench.format_markdown("x", res)


def test_parity_failure_skips_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "PARITY_TOL", -1.0)  # no difference can pass
    out = tmp_path / "dense.json"
    assert bench.main(["--suite", "dense", "--quick", "--device", "cpu", "--json", str(out)]) == 1
    res = json.loads(out.read_text())["suites"]["dense"]
    assert res["status"] == "failed" and res["parity"]["passed"] is False and "metrics" not in res


def test_op_counter_counts_dispatched_ops():
    x = torch.ones(3)
    assert bench._count_ops(lambda: (x + 1).mul(2).sum()) == 3


def test_overhead_suite(tmp_path):
    res = _run(tmp_path, "overhead")
    assert res["status"] == "ok"
    _check_metrics(res, ["ours", "transformers"])
    assert res["setup"]["hidden"] == bench.OVERHEAD_SHAPE["hidden"]  # --quick cannot widen it
    # Op counts are deterministic: ours must not launch more than Llama per decode or train step.
    for what in ("aten ops per decode step", "aten ops per train step"):
        counts = res["metrics"][what]["values"]
        assert all(isinstance(n, int) and n > 0 for n in counts.values()), what
        assert counts["ours"] <= counts["transformers"], (what, counts)


def test_attention_implementation_is_chosen_and_checked(tmp_path):
    res = _run(tmp_path, "dense", "--attn", "eager", "--no-memory")
    assert res["status"] == "ok" and "eager" in res["title"] and res["setup"]["attn"] == "eager"
    with pytest.raises(SystemExit, match="flash-attn"):
        bench.main(["--suite", "dense", "--quick", "--device", "cpu", "--attn", "flash_attention_2"])
