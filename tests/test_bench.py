"""`llmarch bench` tooling: every suite runs end to end on tiny shapes and writes sane JSON.

No timing assertions: speed is measured by benchmarks/, never by unit tests."""

import importlib.util
import json
import statistics

import pytest
import torch

from hf_llmarch import bench
from hf_llmarch.bench import harness, linear, mla, overhead, report, ssm
from hf_llmarch.bench.settings import QUICK
from hf_llmarch.convert import ADAPTERS
from hf_llmarch.models.causal_lm import LlmArchForCausalLM
from hf_llmarch.modules.moe import MoEFeedForward


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
        assert metric.get("ratio") is None or metric["ratio"] > 0, name
        if "goal" in metric:
            assert metric["pass"] in (True, False, None), name


def test_dense_suite(tmp_path, capsys):
    res = _run(tmp_path, "dense", "--markdown")
    assert res["status"] == "ok"
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dense]")]
    assert progress[0].startswith("[dense] parity passed: ") and "ms" in progress[1]  # parity first, then timing
    parity = res["parity"]
    assert parity["passed"] is True and parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert parity["greedy_tokens_equal"] is True and parity["greedy_tokens_differing"] == 0
    assert set(res["metrics"]) == {"train tokens/s", "decode tokens/s", "train peak memory", "decode peak memory"}
    _check_metrics(res, ["ours", "transformers"])
    for what in ("train tokens/s", "decode tokens/s"):
        assert all(v > 0 for v in res["metrics"][what]["values"].values())
    # Peak memory: measured in forked processes on Linux, n/a (None) elsewhere; never negative.
    for what in ("train peak memory", "decode peak memory"):
        assert all(v is None or v >= 0 for v in res["metrics"][what]["values"].values())


def test_moe_suite(tmp_path):
    res = _run(tmp_path, "moe")
    if res["status"] == "skipped":
        pytest.skip(res["reason"])
    assert res["status"] == "ok"
    parity = res["parity"]
    assert parity["passed"] is True
    for field in ("max_rel_output_diff", "max_rel_input_grad_diff", "max_abs_logit_diff"):
        assert parity[field] <= parity["tolerance"], field
    assert parity["greedy_tokens_equal"] is True and parity["greedy_tokens_differing"] == 0
    refs = ["mixtral-eager", "mixtral-grouped_mm", "qwen3_moe-grouped_mm"]  # grouped_mm: transformers' default
    _check_metrics(res, ["ours", *refs, "MixtralForCausalLM"])
    metrics, raw = res["metrics"], res["raw"]
    model_rows = ["model train tokens/s", "model decode tokens/s", "model train peak memory", "model decode peak memory"]
    block_rows = [f"block fwd+bwd {what} vs {ref}" for what in ("tokens/s", "peak memory") for ref in refs]
    assert list(metrics) == [*block_rows, *model_rows]
    # Every number is recomputed from the raw times and bytes, every ratio from its two values.
    block_s, block_bytes = raw["block_fwd_bwd_s"], raw["block_peak_bytes"]
    for ref in refs:
        speed, memory = metrics[f"block fwd+bwd tokens/s vs {ref}"], metrics[f"block fwd+bwd peak memory vs {ref}"]
        for name in ("ours", ref):
            assert len(block_s[name]) == QUICK["repeats"]
            assert speed["values"][name] == pytest.approx(QUICK["moe_tokens"] / statistics.median(block_s[name]))
            assert memory["values"][name] is None or memory["values"][name] == pytest.approx(block_bytes[name] / 2**20)
        assert speed["ratio"] == pytest.approx(speed["values"]["ours"] / speed["values"][ref])
        assert speed["goal"] == ">= 1.0" and memory["goal"] == "<= 1.05"
    train_tokens, decode_tokens = QUICK["batch"] * QUICK["seq"], QUICK["batch"] * QUICK["new_tokens"]
    for name in ("ours", "MixtralForCausalLM"):
        assert metrics["model train tokens/s"]["values"][name] == pytest.approx(
            train_tokens / statistics.median(raw["model_train_s"][name])
        )
        assert metrics["model decode tokens/s"]["values"][name] == pytest.approx(
            decode_tokens / statistics.median(raw["model_decode_s"][name])
        )
        for what in ("train", "decode"):
            peak = raw["model_peak_bytes"][what][name]
            assert metrics[f"model {what} peak memory"]["values"][name] == (None if peak is None else pytest.approx(peak / 2**20))
    for row in model_rows:
        assert metrics[row]["ratio_of"] == "ours/MixtralForCausalLM"


def test_hybrid_suite(tmp_path):
    res = _run(tmp_path, "hybrid", "--no-memory")
    if res["status"] == "skipped":
        pytest.skip(res["reason"])
    assert res["status"] == "ok"
    columns = ["hybrid", "dense", "retention"]
    _check_metrics(res, columns)
    contexts, metrics = res["setup"]["contexts"], res["metrics"]
    lo, hi = min(contexts), max(contexts)
    # JSON turns the int context keys of raw into strings.
    train_s, decode_s = ({int(c): v for c, v in res["raw"][k].items()} for k in ("train_s", "decode_s_per_token"))
    rows = [f"{what} @{c}" for c in contexts for what in ("train tokens/s", "decode ms/token")]
    assert list(metrics) == [*rows, f"retention decode @{hi} / @{lo}"]  # per context, in the order asked
    for c in contexts:
        train, decode = metrics[f"train tokens/s @{c}"], metrics[f"decode ms/token @{c}"]
        for name in columns:
            assert len(train_s[c][name]) == QUICK["repeats"]
            assert train["values"][name] == pytest.approx(c / statistics.median(train_s[c][name]))
            assert decode["values"][name] == pytest.approx(decode_s[c][name] * 1e3)
        for row in (train, decode):
            assert row["ratio_of"] == "hybrid/dense"
            assert row["ratio"] == pytest.approx(row["values"]["hybrid"] / row["values"]["dense"])
        assert ("goal" in decode) == (c == hi) and "goal" not in train  # the decode goal is at the longest only
    longest = metrics[f"decode ms/token @{hi}"]
    assert longest["goal"] == "<= 1.0" and longest["pass"] == (longest["ratio"] <= 1.0)
    flat = metrics[f"retention decode @{hi} / @{lo}"]
    assert flat["ratio"] == pytest.approx(decode_s[hi]["retention"] / decode_s[lo]["retention"])
    assert flat["goal"] == "< 1.1" and flat["pass"] == (flat["ratio"] < 1.1)


def _check_ssm_suite(res: dict, plot) -> None:
    """Every ssm row present and recomputed from the raw times; parity passed for every pair timed."""
    assert res["status"] == "ok" and res["parity"]["passed"] is True
    _check_metrics(res, ["ours", "transformers", "mamba", "mamba2", "dense"])
    refs = [ref for ref, _ in ssm.REFERENCES if ref not in res["skipped"]]
    assert {"MambaForCausalLM", "Mamba2ForCausalLM"} <= set(refs)
    for ref in refs:
        assert res["parity"][f"max_abs_logit_diff[{ref}]"] <= ssm.SSM_PARITY_TOL
        assert res["parity"][f"greedy_tokens_differing[{ref}]"] == 0
    contexts, metrics, raw = QUICK["ssm_contexts"].split(","), res["metrics"], res["raw"]
    lo, hi = contexts[0], contexts[-1]
    train_rows = [
        row for ref, _ in ssm.REFERENCES
        for row in [f"train tokens/s vs {ref}", *([] if ref in res["skipped"] else [f"train peak memory vs {ref}"])]
    ]
    decode_rows = [f"decode {what} @{c}" for c in contexts for what in ("ms/token", "tokens/s")]
    flat_rows = [f"{n} decode @{hi} / @{lo}" for n in ("mamba", "mamba2")]
    tail = [f"decode tokens/s @{lo} vs MambaForCausalLM", *flat_rows, "faster than dense from context"]
    assert list(metrics) == [*train_rows, *decode_rows, *tail]
    for ref in refs:  # JSON keeps the str keys of raw; contexts become str too
        speed = metrics[f"train tokens/s vs {ref}"]
        for name in ("ours", "transformers"):
            assert len(raw["train_s"][ref][name]) == QUICK["repeats"]
            assert speed["values"][name] == pytest.approx(QUICK["ssm_seq"] / statistics.median(raw["train_s"][ref][name]))
        assert speed["ratio"] == pytest.approx(speed["values"]["ours"] / speed["values"]["transformers"])
        assert speed["goal"] == ">= 1.0" and speed["pass"] == (speed["ratio"] >= 1.0)
        assert metrics[f"train peak memory vs {ref}"]["values"] == {"ours": None, "transformers": None}  # --no-memory
    per_token = {c: {n: statistics.median(t) for n, t in raw["decode_s"][c].items()} for c in contexts}
    for c in contexts:
        assert all(len(t) == QUICK["repeats"] * QUICK["decode_steps"] for t in raw["decode_s"][c].values())
        ms, tps = metrics[f"decode ms/token @{c}"], metrics[f"decode tokens/s @{c}"]
        assert set(ms["values"]) == set(tps["values"]) == {"mamba", "mamba2", "dense"}
        for name in ms["values"]:
            assert ms["values"][name] == pytest.approx(per_token[c][name] * 1e3)
            assert tps["values"][name] == pytest.approx(1 / per_token[c][name])
        assert tps["ratio_of"] == "mamba/dense" and tps["ratio"] == pytest.approx(per_token[c]["dense"] / per_token[c]["mamba"])
    assert set(raw["decode_s"][lo]) == {"mamba", "mamba2", "dense", "MambaForCausalLM"}  # the native joins at lo only
    native = metrics[f"decode tokens/s @{lo} vs MambaForCausalLM"]
    assert native["ratio"] == pytest.approx(per_token[lo]["MambaForCausalLM"] / per_token[lo]["mamba"])
    assert native["goal"] == ">= 1.0" and native["pass"] == (native["ratio"] >= 1.0)
    for name in ("mamba", "mamba2"):
        flat = metrics[f"{name} decode @{hi} / @{lo}"]
        assert flat["ratio"] == pytest.approx(per_token[hi][name] / per_token[lo][name])
        assert flat["goal"] == "<= 1.1" and flat["pass"] == (flat["ratio"] <= 1.1)
        first = next((int(c) for c in contexts if per_token[c][name] < per_token[c]["dense"]), None)
        assert metrics["faster than dense from context"]["values"][name] == first
    if plot is not None:
        assert plot.stat().st_size > 0


def test_ssm_suite(tmp_path):
    plot = tmp_path / "decode.png" if importlib.util.find_spec("matplotlib") else None
    res = _run(tmp_path, "ssm", "--no-memory", *(["--plot", str(plot)] if plot else []))
    _check_ssm_suite(res, plot)


def test_ssm_suite_reports_a_reference_from_hf_does_not_take_as_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(ADAPTERS, "jamba", raising=False)  # as before from_hf converted Jamba
    res = _run(tmp_path, "ssm", "--no-memory", "--markdown")
    _check_ssm_suite(res, None)
    why = res["skipped"]["JambaForCausalLM"]
    assert why.startswith("from_hf: model_type 'jamba' is not supported") and why in res["setup_text"]
    assert "greedy_tokens_differing[JambaForCausalLM]" not in res["parity"]
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| train tokens/s vs Jamba"))
    assert row.endswith("| SKIPPED |")


def test_linear_suite(tmp_path):
    """Parity with RWKV and Qwen3-Next first; train rows recomputed from the raw times; a decode row per
    mixer and context; the flat-decode goal only where the state is constant (not Hyena's history)."""
    plot = tmp_path / "decode.png" if importlib.util.find_spec("matplotlib") else None
    res = _run(tmp_path, "linear", "--no-memory", *(["--plot", str(plot)] if plot else []))
    assert res["status"] == "ok" and res["parity"]["passed"] is True and not res["skipped"]
    metrics, raw = res["metrics"], res["raw"]
    for ref, _ in linear.REFERENCES:
        assert res["parity"][f"max_abs_logit_diff[{ref}]"] <= linear.LINEAR_PARITY_TOL
        speed = metrics[f"train tokens/s vs {ref}"]
        for name in ("ours", "transformers"):
            assert speed["values"][name] == pytest.approx(QUICK["ssm_seq"] / statistics.median(raw["train_s"][ref][name]))
    contexts = QUICK["ssm_contexts"].split(",")
    mixers = (*linear.CONSTANT_STATE, *linear.GROWING_STATE)
    for c in contexts:
        assert set(metrics[f"decode ms/token @{c}"]["values"]) == set(mixers)
    for name in mixers:
        row = metrics[f"{name} decode @{contexts[-1]} / @{contexts[0]}"]
        assert ("goal" in row) == (name in linear.CONSTANT_STATE) and row["ratio"] > 0
    _check_metrics(res, ["ours", "transformers", *mixers])
    if plot is not None:
        assert plot.stat().st_size > 0


def test_mla_suite(tmp_path, monkeypatch):
    monkeypatch.setattr(mla, "MLA_GOAL_CONTEXT", 32)  # the goal's row, at a context QUICK reaches
    res = _run(tmp_path, "mla", "--no-memory")
    assert res["status"] == "ok" and res["parity"]["passed"] is True
    for field in ("max_abs_logit_diff", "max_abs_decode_logit_diff"):
        assert res["parity"][field] <= harness.PARITY_TOL, field
    assert res["parity"]["greedy_tokens_differing"] == 0
    _check_metrics(res, ["ours", "transformers", "accounting", "MLA", "baseline"])
    contexts, metrics, raw = QUICK["mla_contexts"].split(","), res["metrics"], res["raw"]
    lo, hi = contexts[0], contexts[-1]
    what = ("decode ms/token", "decode tokens/s", "cache after prefill", "decode peak memory")
    decode_rows = [f"{w} @{c}" for c in contexts for w in what]
    assert list(metrics) == [*decode_rows, f"decode speedup @{hi} / @{lo}", *mla.claim_metrics()]
    speedup = {}
    for c in contexts:  # JSON turns the int context keys of raw into strings
        per_token = {n: statistics.median(t) / QUICK["decode_steps"] for n, t in raw["decode_s"][c].items()}
        assert all(len(t) == QUICK["repeats"] for t in raw["decode_s"][c].values())
        ms, tps = metrics[f"decode ms/token @{c}"], metrics[f"decode tokens/s @{c}"]
        for name in ("ours", "transformers"):
            assert ms["values"][name] == pytest.approx(per_token[name] * 1e3)
            assert tps["values"][name] == pytest.approx(1 / per_token[name])
        speedup[c] = per_token["transformers"] / per_token["ours"]
        assert tps["ratio_of"] == "ours/transformers" and tps["ratio"] == pytest.approx(speedup[c])
        assert ("goal" in tps) == (c == "32")
        if "goal" in tps:
            assert tps["goal"] == ">= 2.0" and tps["pass"] == (tps["ratio"] >= 2.0)
        # Both caches hold the latent and the RoPE key, exactly what the accounting counts (fp32 here).
        held = raw["cache_bytes"][c]
        assert held["ours"] == held["transformers"] == raw["accounting_cache_bytes"][c] > 0
        mib = held["ours"] / 2**20
        assert metrics[f"cache after prefill @{c}"]["values"] == pytest.approx(dict.fromkeys(("ours", "transformers", "accounting"), mib))
        assert raw["prefill_logit_diff"][c] <= harness.PARITY_TOL  # the chunked prefills agree
        assert metrics[f"decode peak memory @{c}"]["values"] == {"ours": None, "transformers": None}  # --no-memory
    widening = metrics[f"decode speedup @{hi} / @{lo}"]
    assert widening["ratio"] == pytest.approx(speedup[hi] / speedup[lo]) and widening["goal"] == "> 1.0"
    v3, v2 = metrics["V3 cache/token vs MHA-equivalent"], metrics["V2 cache/token vs DeepSeek 67B GQA"]
    assert v3["values"] == {"MLA": 70_272, "baseline": 4_997_120} and v3["ratio"] == pytest.approx(100 * (1 - 70_272 / 4_997_120))
    assert v2["values"] == {"MLA": 69_120, "baseline": 389_120} and round(v2["ratio"]) == 82
    assert round(metrics["V2 cache/token at 6-bit KV vs 67B"]["ratio"], 1) == 93.3  # DeepSeek-V2's claim
    claim = metrics["V3 @128K, claim's arithmetic"]
    assert round(claim["values"]["baseline"], 1) == 213.5 and round(claim["values"]["MLA"], 2) == 7.62
    assert round(claim["ratio"], 1) == 96.4  # 28x, not the 93% claimed beside it
    assert round(metrics["V3 @128K, our accounting vs MHA"]["values"]["MLA"], 2) == 8.58


def test_format_table_marks_goals():
    res = {
        "title": "t",
        "status": "ok",
        "columns": ["a", "b"],
        "metrics": {
            "speed": report.metric("tok/s", {"a": 2.0, "b": 1.0}, ("a", "b"), (">=", 1.0)),
            "memory": report.metric("MiB", {"a": None, "b": 1.0}, ("a", "b"), ("<=", 1.05)),
        },
    }
    text = bench.format_table("x", res)
    assert "PASS" in text and "n/a" in text
    assert "| speed (tok/s) | 2.000 | 1.000 | 2.000 | a/b | >= 1.0 | PASS |" in bench.format_markdown("x", res)


def _bump_our_logits(monkeypatch):
    """Ours adds 0.01 to one vocabulary entry's logit: out of tolerance."""
    forward = LlmArchForCausalLM.forward

    def bumped(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits[..., 3] += 0.01
        return out

    monkeypatch.setattr(LlmArchForCausalLM, "forward", bumped)


def _flip_our_last_greedy_token(monkeypatch):
    """Ours generates one other token at the end while its logits stay exact: the reported bug."""
    generate = LlmArchForCausalLM.generate

    def flipped(self, *args, **kwargs):
        seq = generate(self, *args, **kwargs).clone()
        seq[:, -1] = (seq[:, -1] + 1) % self.config.vocab_size
        return seq

    monkeypatch.setattr(LlmArchForCausalLM, "generate", flipped)


def _scale_our_moe_output(monkeypatch):
    """Our MoE block's output is 1% larger: a relative difference of 0.01 / 1.01."""
    forward = MoEFeedForward.forward

    def scaled(self, *args, **kwargs):
        out, aux = forward(self, *args, **kwargs)
        return out * 1.01, aux

    monkeypatch.setattr(MoEFeedForward, "forward", scaled)


@pytest.mark.parametrize(
    "suite, plant, check, amount",
    [
        pytest.param(
            "dense", _bump_our_logits, "logits: max_abs_logit_diff 0.01 > tolerance 0.0001",
            {"max_abs_logit_diff": 0.01}, id="dense-logits",
        ),
        pytest.param(
            "dense", _flip_our_last_greedy_token, "greedy tokens: 1 of 4 new tokens differ, first at new token 3",
            {"greedy_tokens_differing": 1, "max_abs_logit_diff": 0.0}, id="dense-greedy",
        ),
        pytest.param(
            "overhead", _flip_our_last_greedy_token, "greedy tokens: 1 of 4", {"greedy_tokens_differing": 1},
            id="overhead-greedy",
        ),
        pytest.param(
            "moe", _scale_our_moe_output, "block output: max_rel_output_diff vs ",
            {"max_rel_output_diff": 0.01 / 1.01}, id="moe-block-output",
        ),
        pytest.param(
            "moe", _bump_our_logits, "model logits: max_abs_logit_diff 0.01 > tolerance 0.0001",
            {"max_abs_logit_diff": 0.01, "max_rel_output_diff": 0.0}, id="moe-model-logits",
        ),
        pytest.param(
            "moe", _flip_our_last_greedy_token, "model greedy tokens: 1 of 4 new tokens differ, first at new token 3",
            {"greedy_tokens_differing": 1, "max_abs_logit_diff": 0.0}, id="moe-model-greedy",
        ),
        pytest.param(
            "ssm", _bump_our_logits, "MambaForCausalLM logits: max_abs_logit_diff 0.01 > tolerance 0.001",
            {"max_abs_logit_diff[MambaForCausalLM]": 0.01, "max_abs_logit_diff[Mamba2ForCausalLM]": 0.01}, id="ssm-logits",
        ),
        pytest.param(
            "ssm", _flip_our_last_greedy_token, "MambaForCausalLM greedy tokens: 1 of 4 new tokens differ, first at new token 3",
            {"greedy_tokens_differing[Mamba2ForCausalLM]": 1, "max_abs_logit_diff[Mamba2ForCausalLM]": 0.0}, id="ssm-greedy",
        ),
    ],
)
def test_parity_break_fails_the_suite_and_reports_no_speed(tmp_path, monkeypatch, capsys, suite, plant, check, amount):
    plant(monkeypatch)
    out = tmp_path / "r.json"
    assert bench.main(["--suite", suite, "--quick", "--device", "cpu", "--no-memory", "--json", str(out)]) == 1
    res = json.loads(out.read_text())["suites"][suite]
    assert res["status"] == "failed" and res["parity"]["passed"] is False
    for field, value in amount.items():
        assert res["parity"][field] == pytest.approx(value, rel=1e-3, abs=1e-6), field
    assert "metrics" not in res and "raw" not in res
    stdout, stderr = capsys.readouterr()
    progress = [line for line in stdout.splitlines() if line.startswith(f"[{suite}]")]
    assert len(progress) == 1 and progress[0].startswith(f"[{suite}] parity FAILED: ")  # nothing was timed
    assert f"llmarch bench: {suite} failed: parity failed: {check}" in stderr


def test_op_counter_counts_dispatched_ops():
    x = torch.ones(3)
    assert harness.count_ops(lambda: (x + 1).mul(2).sum()) == 3


def test_overhead_suite(tmp_path):
    res = _run(tmp_path, "overhead")
    assert res["status"] == "ok" and res["parity"]["passed"] is True and res["parity"]["greedy_tokens_equal"] is True
    _check_metrics(res, ["ours", "transformers"])
    assert res["setup"]["hidden"] == overhead.OVERHEAD_SHAPE["hidden"]  # --quick cannot widen it
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


def test_mtp_suite(tmp_path):
    """Greedy and self-speculative decoding agree before any timing; the rows come from the raw data."""
    res = _run(tmp_path, "mtp")
    assert res["status"] == "ok" and res["parity"] == {"identical_tokens": True, "passed": True}
    stats, metrics = res["raw"]["speculation"], res["metrics"]
    tokens = 4 * QUICK["new_tokens"]
    assert metrics["draft acceptance rate"]["values"]["mtp"] == pytest.approx(stats["accepted"] / stats["drafted"])
    assert metrics["main-model forwards per token"]["values"]["mtp"] == pytest.approx(stats["main_forwards"] / tokens)
    tps = metrics["decode tokens/s"]
    for name in ("greedy", "mtp"):
        assert tps["values"][name] == pytest.approx(tokens / statistics.median(res["raw"]["decode_s"][name]))


def test_topology_suite(tmp_path, capsys):
    """Encoder vs BertModel, seq2seq vs T5 and BART at tiny shapes: parity first, then every row, each
    speed recomputed from the raw times (no speed asserted)."""
    from argparse import Namespace

    from hf_llmarch.bench import topology

    res = _run(tmp_path, "topology", "--markdown")
    assert res["status"] == "ok"
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[topology]")]
    assert progress[0].startswith("[topology] parity passed: ") and "ms" in progress[1]  # parity first, then timing
    assert "| encoder forward tokens/s vs BertModel (tok/s) |" in out  # --markdown
    parity, refs = res["parity"], ("T5ForConditionalGeneration", "BartForConditionalGeneration")
    assert parity["passed"] is True and parity["max_abs_hidden_diff[BertModel]"] <= harness.PARITY_TOL
    for ref in refs:
        assert parity[f"max_abs_logit_diff[{ref}]"] <= harness.PARITY_TOL and parity[f"greedy_tokens_differing[{ref}]"] == 0
    _check_metrics(res, ["ours", "transformers"])
    rows = [
        ("encoder forward", "encode", "BertModel"), ("generate", "generate", refs[0]), ("train", "train", refs[0]),
        ("generate", "generate", refs[1]),
    ]
    metrics, raw = res["metrics"], res["raw"]
    assert list(metrics) == [f"{name} {what} vs {ref}" for name, _, ref in rows for what in ("tokens/s", "peak memory")]
    tokens = topology.tokens_per_call(Namespace(quick=True, **QUICK))
    for name, call, ref in rows:
        speed, memory = metrics[f"{name} tokens/s vs {ref}"], metrics[f"{name} peak memory vs {ref}"]
        for model in ("ours", "transformers"):
            times = raw["seconds"][f"{call}/{ref}"][model]
            assert len(times) == QUICK["repeats"]
            assert speed["values"][model] == pytest.approx(tokens[call] / statistics.median(times))
            assert memory["values"][model] is None or memory["values"][model] >= 0  # n/a off Linux
        assert speed["ratio"] == pytest.approx(speed["values"]["ours"] / speed["values"]["transformers"])
        assert speed["goal"] == ">= 1.0" and speed["pass"] == (speed["ratio"] >= 1.0)
    assert "threads" in res["setup_text"] and f"median of {QUICK['repeats']}" in res["setup_text"]
