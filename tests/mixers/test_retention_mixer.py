"""The retention mixer inside the model: its forms agree, its state lives in transformers'
cache with constant size, padding is honoured, and LoRA reaches its projections."""

import pytest
import torch
from conftest import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import DynamicCache

from hf_llmarch import compat
from hf_llmarch.mixers import LlmArchRetention


def retention_only(**overrides):
    return tiny_model("hybrid", layer_pattern="(retention/mlp)x2", **overrides)


@pytest.mark.parametrize("seq_len,chunk", [(13, 4), (33, 16), (7, 64)])
def test_parallel_chunk_recurrent_forms_agree_in_the_model(seq_len, chunk):
    ids = torch.randint(0, 250, (2, seq_len))
    logits, grads = {}, {}
    for mode in ("parallel", "chunk", "recurrent"):
        model = retention_only(retention_mode=mode, retention_chunk_size=chunk).double()
        out = model(ids).logits
        out.pow(2).mean().backward()
        logits[mode] = out.detach()
        grads[mode] = model.model.layers[0].retention.q_proj.weight.grad
    for mode in ("chunk", "recurrent"):
        torch.testing.assert_close(logits[mode], logits["parallel"], atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(grads[mode], grads["parallel"], atol=1e-10, rtol=1e-8)


def test_state_lives_in_cache_with_constant_size():
    model = retention_only()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 250, (2, 40)), past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    state = layer.recurrent_states[0]
    heads, dk = model.config.retention_num_heads, model.config.hidden_size // model.config.retention_num_heads
    assert type(layer).__name__ == "LinearAttentionLayer"
    assert state.shape == (2, heads, dk, model.config.retention_value_factor * dk) and state.dtype == torch.float32
    before = state.clone()
    with torch.no_grad():
        model(torch.randint(0, 250, (2, 1)), past_key_values=cache, use_cache=True, position_ids=torch.tensor([[40], [40]]))
    assert cache.layers[0].recurrent_states[0].shape == before.shape
    assert not torch.equal(cache.layers[0].recurrent_states[0], before)


def test_right_padding_does_not_touch_the_state():
    model = retention_only()
    ids = torch.randint(0, 250, (1, 8))
    padded = torch.cat([ids, torch.full((1, 3), model.config.pad_token_id)], 1)
    mask = torch.tensor([[1] * 8 + [0] * 3])
    states = []
    for inputs, m in ((ids, None), (padded, mask)):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(inputs, attention_mask=m, past_key_values=cache, use_cache=True)
        states.append(cache.layers[1].recurrent_states[0])
    torch.testing.assert_close(states[1], states[0], atol=1e-6, rtol=1e-5)


def test_lora_defaults_cover_retention_projections_and_change_output():
    from peft import LoraConfig, get_peft_model

    model = retention_only()
    ids = torch.randint(0, 250, (2, 10))
    with torch.no_grad():
        base = model(ids).logits
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False))
    wrapped = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and ".retention." in n}
    assert {"q_proj", "k_proj", "v_proj", "g_proj", "o_proj"} <= wrapped
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - base).abs().max() > 1e-4


def test_mixer_is_registered_with_its_layer_type():
    model = retention_only()
    assert isinstance(model.model.layers[0].mixer, LlmArchRetention)
    assert model.config.layer_types == ["linear_attention", "linear_attention"]


class _OpTrace(TorchDispatchMode):
    """Every aten op dispatched inside it, with the elements of all tensors it reads and writes."""

    def __init__(self):
        super().__init__()
        self.ops = []  # [(op name, elements)]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.ops.append((str(func), sum(t.numel() for t in tensors)))
        return out


def _cache_tensor_shapes(obj, path="cache", shapes=None) -> dict[str, tuple]:
    """{where: shape} of every tensor held by a transformers cache, its layers and their containers."""
    shapes = {} if shapes is None else shapes
    if isinstance(obj, torch.Tensor):
        shapes[path] = tuple(obj.shape)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _cache_tensor_shapes(value, f"{path}[{key}]", shapes)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _cache_tensor_shapes(value, f"{path}[{i}]", shapes)
    elif type(obj).__module__ == "transformers.cache_utils":  # the cache and its layer objects
        for name, value in vars(obj).items():
            _cache_tensor_shapes(value, f"{path}.{name}", shapes)
    return shapes


def _decode_step_after(model, context: int):
    """(ops of one cached 1-token step after a `context`-token prefill, the cache's tensor shapes)."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 250, (1, context)), use_cache=True, **compat.cache_kwargs(cache))
        with _OpTrace() as trace:
            model(torch.randint(0, 250, (1, 1)), use_cache=True, **compat.cache_kwargs(cache))
    return trace.ops, _cache_tensor_shapes(cache)


def test_decode_cost_does_not_depend_on_context():
    """Structural check (timing lives in `llmarch bench`): after 4 or 100 tokens of prefill, a
    decode step dispatches the same aten ops on tensors of the same sizes, and the cache holds no
    tensor that grows with context. The same probes see attention's cost grow."""
    model = retention_only()
    (ops_short, cache_short), (ops_long, cache_long) = (_decode_step_after(model, c) for c in (4, 100))
    assert ops_short == ops_long and len(ops_short) > 0
    assert cache_short == cache_long
    assert {p for p in cache_long if ".recurrent_states" in p} == {f"cache.layers[{i}].recurrent_states[0]" for i in (0, 1)}

    attention = tiny_model("hybrid", layer_pattern="(attn/mlp)x2")
    (ops_short, cache_short), (ops_long, cache_long) = (_decode_step_after(attention, c) for c in (4, 100))
    assert sum(n for _, n in ops_long) > sum(n for _, n in ops_short) and cache_long != cache_short


def test_prebuilt_4d_mask_is_refused_not_ignored():
    model = retention_only()
    ids = torch.randint(0, 250, (1, 6))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, attention_mask=torch.ones(1, 1, 6, 6))
