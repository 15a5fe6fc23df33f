"""Topology as data: prefix LMs and bidirectional stacks on the one backbone, post-norm blocks,
shared (ALBERT) blocks, and the refusals that keep a causal-only mixer out of them."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_llmarch
from tests.conftest import TINY

# Every mixer each non-causal topology admits, on the one-layer-kind stacks it can run.
PREFIX_STACKS = {
    "attn": dict(layer_pattern="(attn/mlp)x2"),
    "gated_attn": dict(layer_pattern="(gated_attn/mlp)x2"),
    "swa": dict(layer_pattern="attn/mlp swa/mlp", sliding_window=4),
    "mla": dict(layer_pattern="(mla/mlp)x2", q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
}
BIDIRECTIONAL_STACKS = {name: PREFIX_STACKS[name] for name in ("attn", "gated_attn")}


def _model(kind: str, stack: dict, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = hf_llmarch.load_preset("llama-tiny", **TINY | {"num_key_value_heads": 4} | stack, attention_mask_kind=kind, **overrides)
    return AutoModelForCausalLM.from_config(config).eval()


def _ids(batch=2, length=9, seed=1):
    return torch.randint(3, 200, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits_change(model, ids, position: int, changed: int, **kwargs) -> bool:
    """Whether the logits at `position` move when the token at `changed` is replaced."""
    other = ids.clone()
    other[:, changed] = (other[:, changed] + 7) % 200 + 3
    with torch.no_grad():
        before = model(ids, **kwargs).logits[:, position]
        after = model(other, **kwargs).logits[:, position]
    return not torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("mixer", list(PREFIX_STACKS))
def test_prefix_is_bidirectional_and_suffix_causal(mixer):
    model, ids, prefix = _model("prefix", PREFIX_STACKS[mixer]), _ids(), 5
    prefix_mask = torch.arange(ids.shape[1]) < prefix
    prefix_mask = prefix_mask.expand_as(ids)
    assert _logits_change(model, ids, position=1, changed=3, prefix_mask=prefix_mask)  # inside the prefix: both ways
    assert not _logits_change(model, ids, position=1, changed=prefix, prefix_mask=prefix_mask)  # suffix unseen
    assert _logits_change(model, ids, position=6, changed=2, prefix_mask=prefix_mask)
    assert not _logits_change(model, ids, position=6, changed=7, prefix_mask=prefix_mask)  # suffix is causal
    assert not _logits_change(model, ids, position=prefix - 1, changed=prefix, prefix_mask=prefix_mask)


def test_an_empty_prefix_is_the_causal_model_and_a_full_one_the_bidirectional_model():
    ids = _ids()
    prefix_lm, causal, encoder = (_model(kind, PREFIX_STACKS["attn"]) for kind in ("prefix", "causal", "bidirectional"))
    with torch.no_grad():
        empty = prefix_lm(ids, prefix_mask=torch.zeros_like(ids, dtype=torch.bool)).logits
        full = prefix_lm(ids, prefix_mask=torch.ones_like(ids, dtype=torch.bool)).logits
        torch.testing.assert_close(empty, causal(ids).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(full, encoder(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mixer", list(PREFIX_STACKS))
def test_prefix_generate_equals_a_full_forward_per_step_left_padded(mixer):
    """generate() makes the (left-padded) prompt the prefix and decodes causally from the cache: each
    token equals the argmax of a cache-free forward over prompt + tokens so far, the prompt as prefix."""
    model = _model("prefix", PREFIX_STACKS[mixer])
    ids = _ids(length=6)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0  # row 0 left-padded
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    sequence, seq_mask = ids, mask
    for step in range(5):
        prefix = torch.cat([mask.bool(), torch.zeros(2, step, dtype=torch.bool)], dim=1)
        with torch.no_grad():
            logits = model(sequence, attention_mask=seq_mask, prefix_mask=prefix).logits[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        seq_mask = torch.cat([seq_mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    assert torch.equal(out, sequence)


def test_prefix_generate_rows_equal_each_row_alone_and_beam_and_static_cache_run():
    model = _model("prefix", PREFIX_STACKS["attn"])
    ids = _ids(length=6)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    alone = model.generate(ids[:1, 2:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[0, 2:], alone[0])
    static = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, cache_implementation="static")
    assert torch.equal(static, batched)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    assert beams.shape == (2, 10)


def test_prefix_prompt_differs_from_a_causal_prompt():
    """The guard against a prefix silently running causally: the same weights under a causal mask
    generate from a different state of the prompt."""
    ids = _ids(length=8)
    prefix_lm, causal = _model("prefix", PREFIX_STACKS["attn"]), _model("causal", PREFIX_STACKS["attn"])
    with torch.no_grad():
        first_prefix = prefix_lm(ids, prefix_mask=torch.ones_like(ids, dtype=torch.bool)).logits[:, 0]
        first_causal = causal(ids).logits[:, 0]
    assert not torch.allclose(first_prefix, first_causal, atol=1e-4)


@pytest.mark.parametrize("mixer", list(BIDIRECTIONAL_STACKS))
def test_bidirectional_output_sees_later_tokens_and_padding_changes_nothing(mixer):
    model, ids = _model("bidirectional", BIDIRECTIONAL_STACKS[mixer]), _ids()
    assert _logits_change(model, ids, position=0, changed=8)
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=ids.dtype)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(2, 3, dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :9], model(ids).logits, rtol=0, atol=1e-5)


def test_post_norm_block_is_norm_of_the_residual_sum():
    model = _model("bidirectional", dict(layer_pattern="attn/mlp"), norm_placement="post", norm_type="layernorm")
    block, x = model.model.layers[0], torch.randn(1, 5, 64)
    with torch.no_grad():
        h = block.input_layernorm(x + block.self_attn(x, attention_mask=None)[0])
        expected = block.post_attention_layernorm(h + block.mlp(h))
        torch.testing.assert_close(block(x)[0], expected)
    assert not hasattr(model.model, "norm")  # post-norm stacks end normed


def test_shared_blocks_run_one_block_at_every_depth():
    model = _model("bidirectional", dict(layer_pattern="(attn/mlp)x4"), num_layer_groups=1)
    assert len(model.model.layers) == 1
    ids = _ids()
    with torch.no_grad():
        h = model.model.embed_tokens(ids)
        position_embeddings = model.model.rotary_emb(h, torch.arange(9)[None])
        for _ in range(4):
            h = model.model.layers[0](h, position_embeddings=position_embeddings)[0]
        torch.testing.assert_close(model.model(ids).last_hidden_state, model.model.norm(h))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(attention_mask_kind="bidirectional", layer_pattern="(retention/mlp)x2"), "mixer_types"),
        (dict(attention_mask_kind="prefix", layer_pattern="mamba2/mlp attn/mlp"), "mixer_types"),
        (dict(attention_mask_kind="bidirectional", layer_pattern="swa/mlp attn/mlp", sliding_window=4), "mixer_types"),
        (dict(attention_mask_kind="sideways"), "attention_mask_kind"),
        (dict(norm_placement="middle"), "norm_placement"),
        (dict(type_vocab_size=-1), "type_vocab_size"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(position_offset=2), "position_offset"),
        (dict(num_layer_groups=3, attention_mask_kind="bidirectional"), "num_layer_groups"),
        (dict(num_layer_groups=1), "num_layer_groups"),
    ],
)
def test_bad_topology_is_refused_by_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        hf_llmarch.load_preset("llama-tiny", **TINY | {"layer_pattern": "(attn/mlp)x2"} | overrides)


def test_prefix_lm_refuses_labels_without_a_prefix_and_a_misshaped_prefix():
    model, ids = _model("prefix", PREFIX_STACKS["attn"]), _ids()
    with pytest.raises(ValueError, match="prefix_mask"):
        model(ids, labels=ids)
    with pytest.raises(ValueError, match=r"prefix_mask has shape \(2, 4\)"):
        model(ids, prefix_mask=torch.ones(2, 4, dtype=torch.bool))


def test_prefix_lm_refuses_flash_attention():
    model = _model("prefix", PREFIX_STACKS["attn"])
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash"):
        model(_ids(), prefix_mask=torch.ones(2, 9, dtype=torch.bool))


def test_prefix_lm_trains_with_its_collator_and_gradient_checkpointing_saves_and_takes_lora(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from hf_llmarch.data import PrefixLMCollator
    from tests.conftest import CPU_TRAINING, RepeatTask, logged_losses

    model = _model("prefix", PREFIX_STACKS["attn"]).train()
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=80, per_device_train_batch_size=8, lr_scheduler_type="constant",
        gradient_checkpointing=True, remove_unused_columns=False, **CPU_TRAINING,
    )
    collator = PrefixLMCollator(pad_token_id=0, prefix_fraction=0.5)
    trainer = Trainer(model=model, args=args, train_dataset=RepeatTask(), data_collator=collator)
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < 0.5 * losses[0], losses  # the suffix repeats the prefix's motif

    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.attention_mask_kind == "prefix"
    ids, prefix = _ids(), torch.arange(9).expand(2, 9) < 4
    with torch.no_grad():
        base = model(ids, prefix_mask=prefix).logits
        torch.testing.assert_close(reloaded(ids, prefix_mask=prefix).logits, base, rtol=0, atol=0)
    peft_model = get_peft_model(reloaded, LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, prefix_mask=prefix).logits
        assert (adapted - base).abs().max() > 1e-4
        merged = peft_model.merge_and_unload()(ids, prefix_mask=prefix).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
