"""The standard transformers workflows, run on our models exactly as a user would."""

import pytest
import torch
from conftest import tiny_config, tiny_model, train
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, StaticCache, pipeline

from hf_llmarch.data import byte_tokenizer


def test_trainer_bf16_mixed_precision_lowers_loss(family, tmp_path):
    """bf16=True (autocast), what GPU users run: retention upcasts its state, MoE keeps fp32 routing."""
    model = tiny_model(family).train()
    losses = train(model, tmp_path, steps=20, bf16=True)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.9 * losses[0], losses
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_trainer_with_gradient_checkpointing_lowers_loss(family, tmp_path):
    model = tiny_model(family).train()
    losses = train(model, tmp_path, gradient_checkpointing=True)
    assert model.is_gradient_checkpointing
    assert losses[-1] < 0.75 * losses[0], losses


def test_pipeline_text_generation(family):
    """The pipeline's text is the greedy continuation generate() gives each prompt alone, also
    when the pipeline batches prompts of different lengths (left padding)."""
    model = tiny_model(family)
    tok = byte_tokenizer()
    prompts = ["def add(a, b):", "hello"]
    expected = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        expected.append(prompt + tok.decode(new[0, ids.shape[1] :], skip_special_tokens=True))
    gen = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    for batch_size in (1, 2):
        out = gen(prompts, max_new_tokens=8, do_sample=False, batch_size=batch_size)
        assert [o[0]["generated_text"] for o in out] == expected, f"batch_size={batch_size}"


def test_lora_default_targets_change_output_and_merge(family):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(family)
    ids = torch.randint(0, 250, (2, 10))
    with torch.no_grad():
        base = model(ids).logits
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    assert peft_model.peft_config["default"].target_modules  # came from our registered defaults
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-4, "LoRA did not change the output"
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, adapted, atol=1e-5, rtol=1e-4)


def test_save_and_reload_is_exact(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 250, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    if model.config.tie_word_embeddings:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_load_bf16_and_device_map_auto(family, tmp_path):
    tiny_model(family).save_pretrained(tmp_path)
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    out = bf16.generate(torch.randint(0, 250, (1, 5)), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    assert next(mapped.parameters()).device.type == "cpu"
    assert mapped(torch.randint(0, 250, (1, 5))).logits.shape == (1, 5, mapped.config.vocab_size)


@pytest.mark.parametrize("family", ["llama", "hybrid"])
def test_static_cache_decode_compiles_whole(family):
    """The GPU fast path: a static cache and a fullgraph-compiled decode step (no graph break
    anywhere: attention, retention state, MoE routing) reproduce eager greedy generation, and
    later steps reuse the first step's graph instead of recompiling per token."""
    torch._dynamo.reset()  # graphs compiled by earlier tests count towards the recompile limit
    model = tiny_model(family)
    ids = torch.randint(3, 250, (1, 8))
    eager = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    cache = StaticCache(config=model.config, max_cache_len=32)
    step = torch.compile(model.forward, fullgraph=True, dynamic=False)
    with torch.no_grad():
        token = model(ids, cache=cache).logits[:, -1:].argmax(-1)
        tokens = [token]
        for pos in range(8, 13):
            position = torch.tensor([pos])
            stance = "fail_on_recompile" if pos > 8 else "default"
            with torch.compiler.set_stance(stance):
                logits = step(input_ids=token, cache=cache, position_ids=position[None]).logits
            token = logits[:, -1:].argmax(-1)
            tokens.append(token)
    assert torch.equal(torch.cat(tokens, dim=1), eager[:, 8:])


def test_torch_compile_forward_matches(family):
    model = tiny_model(family)
    ids = torch.randint(0, 250, (2, 16))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model)(ids).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


def test_sequence_classification(family, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(family, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config)
    ids = torch.randint(0, 250, (2, 8))
    ids[0, :3] = config.pad_token_id  # left padding: pooled at the last real token
    ids[ids == config.pad_token_id] = 5  # no accidental pads among the real tokens
    ids[0, :3] = config.pad_token_id
    mask = (ids != config.pad_token_id).long()
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.requires_grad
    model.eval()
    with torch.no_grad():  # the padded row is classified exactly as its unpadded self
        alone = model(ids[:1, 3:]).logits
        padded = model(ids, attention_mask=mask).logits[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_mqa_and_mha_generate(kv_heads):
    model = tiny_model("llama", num_key_value_heads=kv_heads)
    assert model.model.layers[0].self_attn.k_proj.out_features == kv_heads * model.config.head_dim
    ids = torch.randint(0, 250, (2, 5))
    a = model.generate(ids, max_new_tokens=6, do_sample=False)
    b = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_resize_token_embeddings_for_new_tokens(family, tmp_path):
    """Adding tokens before fine-tuning: embeddings and head grow together and survive save/load."""
    model = tiny_model(family)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old + 6)
    assert model.config.vocab_size == old + 6
    assert model.get_output_embeddings().weight.shape[0] == old + 6
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.tensor([[old + 5, 3, 4]])
    logits = model(ids).logits
    assert logits.shape == (1, 3, old + 6)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    # Exact for MoE too: from_pretrained moves experts that safetensors maps 8-byte aligned (CPU
    # grouped_mm would round differently) into aligned storage.
    assert torch.equal(reloaded(ids).logits, logits)
