"""Expert parallelism through transformers' own machinery: the config's `base_model_ep_plan`, then a real
two-process load with `DistributedConfig(ep_size=2)` on CPU (gloo) compared with the unsharded model."""

import json
import re

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import hf_llmarch
from hf_llmarch.compat import EXPERT_PARALLEL_DISPATCH

from test_ddp import _torchrun


def _names(model) -> list[str]:
    return [re.sub(r"\.\d+\.", ".*.", n) for n, _ in (*model.named_modules(), *model.named_parameters())]


@pytest.mark.parametrize("pattern", ["(attn/moe)x2", "retention/mlp attn/moe"])
def test_expert_parallel_plan_names_what_the_model_has(pattern):
    config = hf_llmarch.load_preset(
        "hybrid-tiny", layer_pattern=pattern, hidden_size=32, num_attention_heads=2, num_key_value_heads=2
    )
    names = _names(AutoModel.from_config(config))
    assert config.base_model_ep_plan and all(entry in names for entry in config.base_model_ep_plan), names
    assert config.base_model_ep_plan["layers.*.mlp.experts"] == "ep_dispatch_experts"


def test_dense_stack_has_no_expert_parallel_plan():
    # transformers then refuses ep_size > 1 itself ("has no ep_plan").
    assert hf_llmarch.load_preset("llama-tiny").base_model_ep_plan is None


def test_expert_parallel_plan_is_not_saved(tmp_path):
    config = hf_llmarch.load_preset("mixtral-tiny")
    assert "base_model_ep_plan" not in config.to_dict() and "base_model_ep_plan" not in config.to_diff_dict()
    config.save_pretrained(tmp_path)
    assert "ep_plan" not in (tmp_path / "config.json").read_text()
    assert type(config).from_pretrained(tmp_path).base_model_ep_plan == config.base_model_ep_plan


def _sentinel_refused() -> str | None:
    """Why our experts cannot run transformers' AllReduceEP, or None: it routes the pairs another rank owns to
    the sentinel id `num_local_experts` with weight 0, which the experts forward must skip."""
    config = hf_llmarch.load_preset(
        "mixtral-tiny", hidden_size=32, moe_intermediate_size=32, num_attention_heads=2, num_key_value_heads=2
    )
    experts = AutoModelForCausalLM.from_config(config).model.layers[0].mlp.experts
    experts._is_expert_parallel = True  # what transformers' grouped_gemm style sets on sharded experts
    local = experts.gate_up_proj.shape[0]
    x, index = torch.randn(9, 32), torch.tensor([[0, local]] * 9)
    try:
        experts(x, index, torch.tensor([[1.0, 0.0]] * 9))
    except (IndexError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.mark.skipif(
    not EXPERT_PARALLEL_DISPATCH,
    reason="DistributedConfig(ep_size=..., ep_implementation=...) needs transformers>=5.23 (compat.EXPERT_PARALLEL_DISPATCH)",
)
@pytest.mark.parametrize("implementation", ["all_to_all", "all_reduce"])
def test_expert_parallel_from_pretrained_matches_unsharded(tmp_path, implementation):
    if implementation == "all_reduce" and (refused := _sentinel_refused()):
        pytest.skip(
            "MoEExperts.forward (hf_llmarch/modules/moe.py) does not skip transformers' EP sentinel expert id "
            f"(num_local_experts, weight 0) that AllReduceEP and ep_implementation='auto' at inference use: {refused}"
        )
    _torchrun("ep_run.py", tmp_path, implementation)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # Each rank holds its own half of the experts (dim 0 of both fused weights, both layers).
        assert result["local_experts"] == [result["num_experts"] // 2] * 4, result
        assert result["max_expert_weight_diff"] == 0, result
        assert result["tp_sharded_dense"] > 0, result  # attention follows the TP plan meanwhile
        assert result["max_logit_diff"] < 1e-5 and result["same_greedy_tokens"], result
        assert result["loss_diff"] < 1e-6, result
        # fp32 on one machine: only the summation order differs (expert grads are ~3e-3 here).
        assert result["max_dense_grad_diff"] < 1e-6 and result["max_expert_grad_diff"] < 1e-7, result
