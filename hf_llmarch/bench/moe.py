"""moe suite: our `MoEFeedForward` vs transformers' `MixtralSparseMoeBlock` (same weights).
Parity first (outputs and input gradients within PARITY_TOL); only then forward+backward tokens/s."""

import torch

from .harness import PARITY_TOL, interleave, median, parity_gate
from .report import metric
from .settings import DTYPES, pick

MOE_SPEED_GOAL = (">=", 1.0)
MOE_SETUP = ("moe_tokens", "hidden", "moe_intermediate", "experts", "top_k")


def _moe_blocks(s, device):
    """(ours, {name: mixtral block}) sharing router and expert weights, fp32 on `device`."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from ..models.dense import LlmArchDenseConfig
    from ..modules.moe import MoEFeedForward

    shape = dict(hidden_size=s.hidden, num_experts_per_tok=s.top_k)
    ours_cfg = LlmArchDenseConfig(
        **shape,
        num_attention_heads=1,
        moe_intermediate_size=s.moe_intermediate,
        num_experts=s.experts,
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
        cfg._experts_implementation = impl  # a standalone block gets no default from PreTrainedModel
        block = MixtralSparseMoeBlock(cfg)
        block.gate.weight.data.copy_(ours.gate.weight.data)
        block.experts.gate_up_proj.data.copy_(ours.experts.gate_up_proj.data)
        block.experts.down_proj.data.copy_(ours.experts.down_proj.data)
        refs[f"mixtral-{impl}"] = block.to(device)
    return ours.to(device), refs


def _block_output(block, x):
    """Ours returns (out, aux_loss): the aux loss is computed in the timed forward but not trained on."""
    out = block(x)
    return out[0] if isinstance(out, tuple) else out


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _moe_parity(blocks: dict, s, device) -> tuple[dict, list[str]]:
    """Outputs and input gradients of every Mixtral variant against ours, fp32. Returns (the
    parity fields, one line per failed check saying against which variant and by how much)."""
    x = torch.randn(1, min(s.moe_tokens, 256), s.hidden, device=device)
    outs, grads = {}, {}
    for name, block in blocks.items():
        xi = x.clone().requires_grad_(True)
        outs[name] = _block_output(block, xi)
        outs[name].square().sum().backward()
        grads[name] = xi.grad
    diffs, failures = {}, []
    for what, values in (("output", outs), ("input_grad", grads)):
        by_ref = {n: _rel_diff(v, values["ours"]) for n, v in values.items() if n != "ours"}
        worst = max(by_ref, key=lambda n: by_ref[n])
        diffs[f"max_rel_{what}_diff"] = by_ref[worst]
        if not by_ref[worst] <= PARITY_TOL:  # `not <=` so that a NaN fails too
            failures.append(f"{what}: max_rel_{what}_diff vs {worst} {by_ref[worst]:.3g} > tolerance {PARITY_TOL:g}")
    return {**diffs, "tolerance": PARITY_TOL, "passed": not failures}, failures


def _moe_step(block, x, grad_out):
    """Forward + backward of the block output; weight and input grads are freed after each step."""
    xi = x.detach().requires_grad_(True)

    def step():
        _block_output(block, xi).backward(grad_out)
        block.zero_grad(set_to_none=True)
        xi.grad = None

    return step


def bench_moe(s) -> dict:
    res = {"title": "MoEFeedForward vs transformers MixtralSparseMoeBlock (same weights)"}
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    try:
        ours, refs = _moe_blocks(s, device)
    except ImportError as err:
        return {**res, "status": "skipped", "reason": f"MoE module not importable: {err}"}
    blocks = {"ours": ours, **refs}
    res.update(columns=list(blocks), setup=pick(s, MOE_SETUP))
    res["setup_text"] = (
        f"{s.moe_tokens} tokens, hidden {s.hidden}, expert intermediate {s.moe_intermediate}, {s.experts} experts, "
        f"top-{s.top_k}; forward + backward of the block output (ours also computes its router losses); "
        f"{s.device}, {s.dtype}, median of {s.repeats}. mixtral-eager is the block's own loop, "
        "mixtral-grouped_mm the path transformers picks by default inside a model"
    )
    res["parity"], failures = _moe_parity(blocks, s, device)
    if failed := parity_gate("moe", res, failures):
        return failed
    x = torch.randn(1, s.moe_tokens, s.hidden, device=device, dtype=dtype)
    grad_out = torch.randn_like(x)
    steps = {name: _moe_step(block.to(dtype), x, grad_out) for name, block in blocks.items()}
    times = interleave("moe", "fwd+bwd", steps, s.repeats, device, lambda t: f"{s.moe_tokens / t:,.0f} tok/s")
    tps = {n: s.moe_tokens / median(t) for n, t in times.items()}
    res["metrics"] = {
        f"fwd+bwd tokens/s vs {ref}": metric("tok/s", {"ours": tps["ours"], ref: tps[ref]}, ("ours", ref), MOE_SPEED_GOAL)
        for ref in refs
    }
    res["raw"] = {"fwd_bwd_s": times}
    return {**res, "status": "ok"}
