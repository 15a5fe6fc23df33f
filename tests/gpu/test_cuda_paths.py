"""GPU paths against the CPU-tested references. Skipped without CUDA (CI is CPU-only)."""

import pytest
import torch
from conftest import tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.gpu
def test_flash_attention_matches_sdpa_with_left_padding():
    pytest.importorskip("flash_attn")
    model = tiny_model("mistral").cuda().to(torch.bfloat16)
    ids = torch.randint(0, 250, (2, 24), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("flash_attention_2")
        flash = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(flash[real].float(), ref[real].float(), atol=3e-2, rtol=3e-2)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_grouped_matches_naive_on_cuda(dtype):
    from torch.nn import functional as F

    from hf_llmarch.ops.moe import experts_grouped, experts_naive

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 64, device="cuda", dtype=dtype, generator=g)
    gate_up = torch.randn(8, 256, 64, device="cuda", dtype=dtype, generator=g) * 0.05
    down = torch.randn(8, 64, 128, device="cuda", dtype=dtype, generator=g) * 0.05
    idx = torch.randint(0, 8, (256, 2), device="cuda", generator=g)
    w = torch.rand(256, 2, device="cuda", dtype=dtype, generator=g)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(experts_grouped(x, idx, w, gate_up, down, F.silu), experts_naive(x, idx, w, gate_up, down, F.silu), atol=tol, rtol=tol)


@cuda
@pytest.mark.gpu
def test_retention_chunk_on_cuda_matches_naive():
    from hf_llmarch.ops.retention import retention_chunk, retention_log_decay, retention_naive

    q, k = (torch.randn(2, 300, 4, 32, device="cuda") for _ in range(2))
    v = torch.randn(2, 300, 4, 64, device="cuda")
    g = retention_log_decay(4, 2, 300, device="cuda")
    o_ref, s_ref = retention_naive(q.double(), k.double(), v.double(), g.double())
    o, s = retention_chunk(q, k, v, g, chunk_size=64)
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.gpu
def test_hybrid_generate_on_cuda_matches_uncached():
    model = tiny_model("hybrid").cuda()
    ids = torch.randint(0, 250, (2, 8), device="cuda")
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=False), model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False))


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "hybrid"])
def test_packed_batch_with_flash_varlen_equals_each_alone(family):
    """DataCollatorWithFlattening adds cu_seq_lens: flash-attn's varlen path, retention's restarts."""
    pytest.importorskip("flash_attn")
    from transformers import DataCollatorWithFlattening

    model = tiny_model(family).cuda().to(torch.bfloat16)
    model.set_attn_implementation("flash_attention_2")
    sequences = [list(range(5, 75)), list(range(30, 80)), list(range(100, 109))]
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": s} for s in sequences])
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**batch).logits[0].float()
        alone = torch.cat([model(torch.tensor([s], device="cuda")).logits[0].float() for s in sequences])
    torch.testing.assert_close(packed, alone, atol=5e-2, rtol=5e-2)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "hybrid"])
def test_generate_auto_compiles_static_cache_on_cuda(family):
    """On CUDA, generate() compiles the decode step itself for a static cache; same tokens as eager."""
    model = tiny_model(family).cuda().to(torch.bfloat16)
    ids = torch.randint(3, 250, (2, 8), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, cache_implementation="static")
    eager = model.generate(ids, disable_compile=True, **kwargs)
    compiled = model.generate(ids, **kwargs)
    assert torch.equal(compiled, eager)
