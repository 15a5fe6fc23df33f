"""MoE FFN inside the backbone: aux loss reaches the output and the loss, ignores padding,
per-expert counts are available, and training with the aux loss lowers the loss."""

import pytest
import torch
from conftest import tiny_model, train
from transformers import AutoModelForCausalLM

import hf_llmarch

from hf_llmarch.modules.moe import MoEFeedForward


def moe_layers(model):
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def record_moe_inputs(model) -> list:
    """[(MoE layer, hidden states [B, T, H] it received, its gate weight [E, H] then)], appended by
    every forward from now on (the weight is copied: an optimizer step changes it after)."""
    seen = []
    for layer in moe_layers(model):
        layer.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].detach(), m.gate.weight.detach().clone())))
    return seen


def routed_counts(layer, hidden, gate, real=None) -> torch.Tensor:
    """int64 [E]: the top-k experts of each real token, recomputed from the gate weight by hand."""
    logits = hidden.reshape(-1, hidden.shape[-1]).float() @ gate.float().T  # [N, E]
    idx = logits.topk(layer.top_k, dim=-1).indices  # [N, k]; softmax keeps the order
    if real is not None:
        idx = idx[real.reshape(-1).bool()]
    return torch.bincount(idx.reshape(-1), minlength=layer.num_experts)


def test_aux_loss_is_in_the_output_and_added_to_the_loss():
    model = tiny_model("hybrid")
    ids = torch.randint(0, 250, (2, 12))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    lm_only = model.loss_function(logits=out.logits, labels=ids, vocab_size=model.config.vocab_size)
    torch.testing.assert_close(out.loss, lm_only + out.aux_loss)
    layers = moe_layers(model)
    expected = torch.stack([model.config.router_aux_loss_coef * m.last_load_balancing_loss + model.config.router_z_loss_coef * m.last_z_loss for m in layers]).mean()
    torch.testing.assert_close(out.aux_loss.detach(), expected)


def test_aux_loss_and_counts_ignore_padding():
    model = tiny_model("hybrid").train()  # aux loss is computed in training (dropout is 0: deterministic)
    ids = torch.randint(0, 250, (1, 9))
    padded = torch.cat([torch.full((1, 5), model.config.pad_token_id), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    seen = record_moe_inputs(model)
    with torch.no_grad():
        alone = model(ids)
        counts_alone = [m.last_tokens_per_expert.clone() for m in moe_layers(model)]
        with_pad = model(padded, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        counts_pad = [m.last_tokens_per_expert.clone() for m in moe_layers(model)]
    torch.testing.assert_close(with_pad.aux_loss, alone.aux_loss, atol=1e-6, rtol=1e-5)
    n = len(counts_alone)
    expected = [routed_counts(*rec) for rec in seen[:n]] + [routed_counts(*rec, mask) for rec in seen[n:]]
    assert len(expected) == 2 * n
    for got, want in zip(counts_alone + counts_pad, expected):
        assert torch.equal(got, want)
    for a, b in zip(counts_alone, counts_pad):
        assert torch.equal(a, b) and int(a.sum()) == 9 * model.config.num_experts_per_tok


def test_trainer_with_aux_loss_lowers_loss(tmp_path):
    model = tiny_model("hybrid", router_aux_loss_coef=0.05).train()
    seen = record_moe_inputs(model)
    losses = train(model, tmp_path, steps=40)
    assert losses[-1] < 0.75 * losses[0], losses
    layers = moe_layers(model)
    for layer, hidden, gate in seen[-len(layers) :]:  # the last step's inputs (RepeatTask has no padding)
        assert torch.equal(layer.last_tokens_per_expert, routed_counts(layer, hidden, gate))


def test_inference_skips_aux_but_counts_tokens():
    model = tiny_model("hybrid")
    seen = record_moe_inputs(model)
    with torch.no_grad():
        out = model(torch.randint(0, 250, (2, 7)))
    assert out.aux_loss is None and len(seen) == len(moe_layers(model))
    for layer, hidden, gate in seen:
        assert torch.equal(layer.last_tokens_per_expert, routed_counts(layer, hidden, gate))


def test_no_aux_loss_without_moe():
    out = tiny_model("llama")(torch.randint(0, 250, (1, 6)))
    assert out.aux_loss is None


def test_grouped_mm_probe_inside_activation_checkpoint():
    """The first MoE forward probes grouped_mm; under a non-reentrant checkpoint that probe must
    not change the number of saved tensors between forward and recomputation."""
    from hf_llmarch.ops.moe import grouped

    model = tiny_model("hybrid").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grouped._probe_cache.clear()
    ids = torch.randint(0, 250, (2, 16))
    model(ids, labels=ids).loss.backward()
    assert grouped._probe_cache and model.model.layers[0].mlp.gate.weight.grad is not None


def test_lora_defaults_cover_shared_experts_and_experts_join_when_asked():
    """Default targets: attention, dense MLPs and the shared expert, not the routed experts (3D
    weights) or the router. peft's `target_parameters` adds the experts: they train and merge."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("moe")
    wrapped = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    lora_modules = {name.split("model.layers.")[-1] for name, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert {f"1.mlp.shared_expert.{p}_proj" for p in ("gate", "up", "down")} <= lora_modules
    assert {"0.mlp.gate_proj", "1.self_attn.q_proj"} <= lora_modules
    assert not any("experts" in n or n.endswith(("mlp.gate", "shared_expert_gate")) for n in lora_modules)

    model = tiny_model("moe")
    experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    config = LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False, target_modules=["q_proj"], target_parameters=experts)
    peft_model = get_peft_model(model, config)
    ids = torch.randint(0, 250, (2, 10))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    expert_lora = {n: p for n, p in peft_model.named_parameters() if p.requires_grad and "experts" in n}
    assert len(expert_lora) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in expert_lora.values())
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        before = model.model.layers[1].mlp.experts.base_layer.base_layer.gate_up_proj.detach().clone()
        merged = peft_model.merge_and_unload()
        assert not torch.equal(merged.model.layers[1].mlp.experts.gate_up_proj, before)
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


MOE_TINY_PRESETS = ["mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "switch-top1-tiny", "noisy-topk-tiny"]


@pytest.mark.parametrize("preset", MOE_TINY_PRESETS)
def test_tiny_moe_presets_train_a_step_and_generate(preset):
    """Each preset's router and layout run end to end: the loss is LM + aux, a step moves every routed
    tensor, and cached greedy decoding equals uncached."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_llmarch.load_preset(preset)).train()
    ids = torch.randint(0, 250, (2, 16))
    out = model(ids, labels=ids)
    lm_only = model.loss_function(logits=out.logits, labels=ids, vocab_size=model.config.vocab_size)
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, lm_only + out.aux_loss)
    out.loss.backward()
    for layer in moe_layers(model):
        assert layer.gate.weight.grad.abs().sum() > 0 and layer.experts.gate_up_proj.grad.abs().sum() > 0
    model.eval()
    prompt = ids[:1, :6]
    cached = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
