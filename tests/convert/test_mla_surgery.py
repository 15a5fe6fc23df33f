"""GQA / MHA -> MLA surgery: exact at full rank with RoPE kept on every group (ours and a native
Llama checkpoint), a smaller cache and a reported error below it, and errors naming what it cannot do."""

import pytest
import torch
from conftest import tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_llmarch.cli import main
from hf_llmarch.convert.mla_surgery import gqa_to_mla


def _ids():
    return torch.randint(3, 250, (2, 13), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kv_heads", [2, 4])  # GQA and MHA
def test_full_rank_with_every_group_rotating_is_exact(kv_heads):
    source = tiny_model("llama", num_key_value_heads=kv_heads).double()
    mla, report = gqa_to_mla(source)
    assert set(mla.config.mixer_types) == {"mla"} and report["cache_bytes_per_token"]["reduction"] == 0
    with torch.no_grad():
        torch.testing.assert_close(mla(_ids()).logits, source(_ids()).logits, atol=1e-10, rtol=1e-8)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(mla.generate(_ids(), **kwargs), source.generate(_ids(), **kwargs))


def test_rorope_keeps_scores_exact_while_moving_the_rope_heads():
    """Virtual KV heads mixed per RoPE pair leave the scores exact even when the mixed basis is not
    the identity: full rank, every virtual head rotating, on keys whose groups share directions."""
    source = tiny_model("llama").double()
    with torch.no_grad():
        for layer in source.model.layers:  # correlated groups, so the PCA mixes them
            k = layer.self_attn.k_proj.weight
            k[16:] = 0.7 * k[:16] + 0.3 * k[16:]
    mla, _ = gqa_to_mla(source)
    with torch.no_grad():
        torch.testing.assert_close(mla(_ids()).logits, source(_ids()).logits, atol=1e-10, rtol=1e-8)


def test_lower_rank_shrinks_the_cache_and_reports_the_error():
    source = tiny_model("llama").double()
    errors, reductions = [], []
    for rank in (24, 16, 8):
        mla, report = gqa_to_mla(source, kv_lora_rank=rank, rope_heads=1)
        errors.append(max(report["svd_relative_error"]))
        reductions.append(report["cache_bytes_per_token"]["reduction"])
        assert report["cache_bytes_per_token"]["after"] == 2 * (rank + 16) * 2  # layers x (latent + RoPE key) x bf16
    assert errors == sorted(errors) and reductions == sorted(reductions) and reductions[-1] == pytest.approx(0.625)
    assert all(0 < e < 1 for e in report["rope_dropped_energy"])


def test_native_llama_checkpoint_through_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    native = LlamaForCausalLM(
        LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
    ).eval()
    native.save_pretrained(tmp_path / "llama")
    assert main(["mla-convert", str(tmp_path / "llama"), "--out", str(tmp_path / "mla")]) == 0
    assert "cache bytes/token (bf16): 256 -> 256" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    mla = AutoModelForCausalLM.from_pretrained(tmp_path / "mla").eval()
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(mla(ids).logits, native(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, kwargs, match",
    [
        ({}, {"rope_heads": 3}, r"rope_heads=3 must lie in \[1, num_key_value_heads=2\]"),
        ({}, {"kv_lora_rank": 99}, r"kv_lora_rank=99 must lie in \[1, 32\]"),
        ({"qk_norm": True}, {}, "qk_norm=True is not supported by the MLA surgery"),
        ({"layer_pattern": "attn/mlp swa/mlp", "sliding_window": 4}, {}, r"mixer_types=\['attn', 'swa'\]"),
    ],
)
def test_what_the_surgery_cannot_convert_is_named(overrides, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gqa_to_mla(tiny_model("llama", **overrides), **kwargs)
