"""moe suite. The block: our `MoEFeedForward` vs transformers' `MixtralSparseMoeBlock` (eager and
grouped_mm experts) and `Qwen3MoeSparseMoeBlock` (the experts path a Qwen3MoeForCausalLM picks by
default), all on the same weights: forward+backward tokens/s and peak memory. The model:
`llmarch_moe` converted from a `MixtralForCausalLM` (see `moe_model`). Parity of both first (block
outputs and input gradients, model logits and greedy tokens); only then anything is timed."""

import torch

from .harness import PARITY_TOL, cpu_peaks, cuda_peak, interleave, median, parity_gate, rss_growth
from .moe_model import MODEL_REF, MOE_PRELOAD, bench_moe_model, moe_model_pair, moe_model_parity, moe_model_text
from .report import metric
from .settings import DTYPES, pick

MOE_SPEED_GOAL = (">=", 1.0)
MOE_MEMORY_GOAL = ("<=", 1.05)
MOE_SETUP = (
    "moe_tokens", "hidden", "moe_intermediate", "experts", "top_k", "layers", "heads", "kv_heads", "vocab",
    "batch", "seq", "prompt", "new_tokens", "attn",
)


def default_experts_impl() -> str:
    """The experts implementation a Qwen3MoeForCausalLM gets when none is asked for (a standalone
    block gets no default from PreTrainedModel, so ask a tiny model)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tiny = Qwen3MoeConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, moe_intermediate_size=4, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=8, num_experts=2, num_experts_per_tok=1,
    )
    return Qwen3MoeForCausalLM(tiny).config._experts_implementation


def _copy_weights(block, ours):
    block.gate.weight.data.copy_(ours.gate.weight.data)
    block.experts.gate_up_proj.data.copy_(ours.experts.gate_up_proj.data)
    block.experts.down_proj.data.copy_(ours.experts.down_proj.data)
    return block


def moe_blocks(s, device):
    """(ours, {name: transformers block}) sharing router and expert weights, fp32 on `device`. Every
    block renormalises the kept top-k weights (Mixtral always; Qwen3-MoE and ours by norm_topk_prob)."""
    from transformers import MixtralConfig, Qwen3MoeConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from ..models.dense import LlmArchDenseConfig
    from ..modules.moe import MoEFeedForward

    shape = dict(hidden_size=s.hidden, num_experts_per_tok=s.top_k)
    ours_cfg = LlmArchDenseConfig(
        **shape,
        num_attention_heads=1,
        moe_intermediate_size=s.moe_intermediate,
        num_experts=s.experts,
        norm_topk_prob=True,
        layer_pattern="attn/moe",
    )
    torch.manual_seed(0)
    ours = MoEFeedForward(ours_cfg)
    ours.experts.reset_parameters(std=s.hidden**-0.5)
    refs = {}
    for impl in ("eager", "grouped_mm"):
        cfg = MixtralConfig(
            **shape, intermediate_size=s.moe_intermediate, num_local_experts=s.experts, router_jitter_noise=0.0
        )
        cfg._experts_implementation = impl
        refs[f"mixtral-{impl}"] = _copy_weights(MixtralSparseMoeBlock(cfg), ours).to(device)
    impl = default_experts_impl()
    cfg = Qwen3MoeConfig(**shape, moe_intermediate_size=s.moe_intermediate, num_experts=s.experts, norm_topk_prob=True)
    cfg._experts_implementation = impl
    refs[f"qwen3_moe-{impl}"] = _copy_weights(Qwen3MoeSparseMoeBlock(cfg), ours).to(device)
    return ours.to(device), refs


def _block_output(block, x):
    """Ours returns (out, aux_loss): the aux loss is computed in the timed forward but not trained on."""
    out = block(x)
    return out[0] if isinstance(out, tuple) else out


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def moe_block_parity(blocks: dict, s, device) -> tuple[dict, list[str]]:
    """Outputs and input gradients of every transformers block against ours, fp32. Returns (the
    parity fields, one line per failed check saying against which block and by how much)."""
    x = torch.randn(1, min(s.moe_tokens, 256), s.hidden, device=device)
    outs, grads = {}, {}
    for name, block in blocks.items():
        xi = x.clone().requires_grad_(True)
        outs[name] = _block_output(block, xi)
        outs[name].square().sum().backward()
        grads[name] = xi.grad
        block.zero_grad(set_to_none=True)
    diffs, failures = {}, []
    for what, values in (("output", outs), ("input_grad", grads)):
        by_ref = {n: _rel_diff(v, values["ours"]) for n, v in values.items() if n != "ours"}
        worst = max(by_ref, key=lambda n: by_ref[n])
        diffs[f"max_rel_{what}_diff"] = by_ref[worst]
        if not by_ref[worst] <= PARITY_TOL:  # `not <=` so that a NaN fails too
            failures.append(f"block {what}: max_rel_{what}_diff vs {worst} {by_ref[worst]:.3g} > tolerance {PARITY_TOL:g}")
    return diffs, failures


def _moe_step(block, s, device):
    """Forward + backward of the block output on fixed inputs; weight and input grads are freed after each step."""
    gen = torch.Generator().manual_seed(2)
    dtype = next(block.parameters()).dtype
    x = torch.randn(1, s.moe_tokens, s.hidden, generator=gen).to(device, dtype).requires_grad_(True)
    grad_out = torch.randn(x.shape, generator=gen).to(device, dtype)

    def step():
        _block_output(block, x).backward(grad_out)
        block.zero_grad(set_to_none=True)
        x.grad = None

    return step


def cpu_block_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build the blocks, measure one block's fwd+bwd peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cpu = torch.device("cpu")
    ours, refs = moe_blocks(settings, cpu)
    block = {"ours": ours, **refs}[job["model"]].to(DTYPES[settings.dtype])
    del ours, refs
    return rss_growth(_moe_step(block, settings, cpu))


def _block_memory(s, blocks: dict, device) -> dict:
    """{block: peak bytes of one fwd+bwd, or None}."""
    if s.no_memory:
        return dict.fromkeys(blocks)
    if device.type == "cuda":
        return {name: cuda_peak(_moe_step(block, s, device), device) for name, block in blocks.items()}
    jobs = [{"settings": s, "model": name, "what": "block fwd+bwd"} for name in blocks]
    return dict(zip(blocks, cpu_peaks("moe", jobs, cpu_block_peak_worker, MOE_PRELOAD)))


def _block_metrics(s, blocks: dict, device) -> tuple[dict, dict]:
    steps = {name: _moe_step(block, s, device) for name, block in blocks.items()}
    times = interleave("moe", "block fwd+bwd", steps, s.repeats, device, lambda t: f"{s.moe_tokens / t:,.0f} tok/s")
    peaks = _block_memory(s, blocks, device)
    tps = {n: s.moe_tokens / median(t) for n, t in times.items()}
    mib = {n: None if b is None else b / 2**20 for n, b in peaks.items()}
    refs = [n for n in blocks if n != "ours"]
    metrics = {
        f"block fwd+bwd tokens/s vs {ref}": metric("tok/s", {"ours": tps["ours"], ref: tps[ref]}, ("ours", ref), MOE_SPEED_GOAL)
        for ref in refs
    }
    metrics |= {
        f"block fwd+bwd peak memory vs {ref}": metric("MiB", {"ours": mib["ours"], ref: mib[ref]}, ("ours", ref), MOE_MEMORY_GOAL)
        for ref in refs
    }
    return metrics, {"block_fwd_bwd_s": times, "block_peak_bytes": peaks}


def bench_moe(s) -> dict:
    res = {"title": "MoE block vs Mixtral / Qwen3-MoE blocks; llmarch_moe vs MixtralForCausalLM (same weights)"}
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    try:
        ours, refs = moe_blocks(s, device)
    except ImportError as err:
        return {**res, "status": "skipped", "reason": f"MoE module not importable: {err}"}
    blocks = {"ours": ours, **refs}
    models = moe_model_pair(s, device)
    res.update(columns=[*blocks, MODEL_REF], setup=pick(s, MOE_SETUP))
    res["setup_text"] = (
        f"Block: {s.moe_tokens} tokens, hidden {s.hidden}, expert intermediate {s.moe_intermediate}, {s.experts} experts, "
        f"top-{s.top_k}, top-k weights renormalised in every block; forward + backward of the block output (ours also "
        "computes its router losses, the transformers blocks compute none). mixtral-eager is the block's own loop, "
        "mixtral-grouped_mm the path transformers picks by default inside a model, as is the qwen3_moe one. "
        f"{moe_model_text(s, models[MODEL_REF])}; {s.device}, {s.dtype}, median of {s.repeats}"
    )
    block_parity, failures = moe_block_parity(blocks, s, device)
    model_parity, model_failures = moe_model_parity(models, s, device)
    failures += model_failures
    res["parity"] = {**block_parity, **model_parity, "tolerance": PARITY_TOL, "passed": not failures}
    if failed := parity_gate("moe", res, failures):
        return failed
    blocks = {name: block.to(dtype) for name, block in blocks.items()}
    res["metrics"], res["raw"] = _block_metrics(s, blocks, device)
    model_metrics, model_raw = bench_moe_model(s, {n: m.to(dtype) for n, m in models.items()}, device, MOE_SPEED_GOAL, MOE_MEMORY_GOAL)
    res["metrics"] |= model_metrics
    res["raw"] |= model_raw
    return {**res, "status": "ok"}
