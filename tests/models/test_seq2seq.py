"""Encoder-decoders on the one backbone (the original Transformer, T5-style, RedLLM): cached decoding
equals a full forward, generate() greedy / sampling / beams, RedLLM's continuous RoPE positions
against a rotation by hand, the text2text pipeline, training, LoRA, save/load, and refusals."""

import pytest
import torch
import transformers as T

import hf_llmarch  # noqa: F401  (registers the families)
from hf_llmarch.models.encoder import LlmArchEncoderConfig
from hf_llmarch.models.seq2seq import LlmArchSeq2SeqConfig
from tests.conftest import CPU_TRAINING, logged_losses

BASE = dict(
    vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4, layer_pattern="(attn/mlp)x2",
    encoder_layer_pattern="(attn/mlp)x3", pad_token_id=0, eos_token_id=1, bos_token_id=None, decoder_start_token_id=0,
)
VARIANTS = {
    "redllm": dict(position_embedding_type="rope", continuous_positions=True, qkv_norm=True, attention_output_norm=True, tie_word_embeddings=True),
    "t5": dict(position_embedding_type="relative_buckets", hidden_act="gelu_new", attention_multiplier=1.0,
               relative_attention_num_buckets=8, relative_attention_max_distance=20),
    "transformer": dict(position_embedding_type="sinusoidal", norm_placement="post", norm_type="layernorm", mlp_gated=False,
                        hidden_act="relu", mlp_bias=True, attention_bias=True, attention_out_bias=True, tie_word_embeddings=True,
                        embedding_multiplier=32**0.5),
    "bart": dict(position_embedding_type="learned", position_offset=2, max_position_embeddings=66, norm_placement="post",
                 norm_type="layernorm", mlp_gated=False, hidden_act="gelu", embedding_norm=True, lm_head_bias=True, tie_word_embeddings=True),
}


def _model(variant: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return T.AutoModelForSeq2SeqLM.from_config(LlmArchSeq2SeqConfig(**BASE | VARIANTS[variant] | overrides)).eval()


def _batch():
    ids = torch.randint(2, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0  # row 1 right-padded
    labels = torch.randint(2, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    return ids, mask, labels


# Any causal mixer may sit in the decoder: each block adds cross-attention after it.
DECODER_STACKS = {
    "retention": dict(layer_pattern="retention/mlp attn/mlp"),
    "mamba2": dict(layer_pattern="mamba2/mlp attn/mlp", mamba2_chunk_size=4, mamba2_head_dim=8),
    "gated_deltanet": dict(layer_pattern="gated_deltanet/mlp attn/mlp", delta_chunk_size=4),
    "rwkv7": dict(layer_pattern="rwkv7/rwkv_cmix attn/mlp", rwkv7_head_dim=8, rwkv7_chunk_size=4),
    "hyena": dict(layer_pattern="hyena/mlp attn/mlp"),
    "swa": dict(layer_pattern="swa/mlp attn/mlp", sliding_window=3),
    "mla": dict(layer_pattern="(mla/mlp)x2", q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
    "moe": dict(layer_pattern="attn/moe attn/mlp", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
}
CACHE_CASES = [(variant, {}) for variant in VARIANTS] + [("redllm", stack) for stack in DECODER_STACKS.values()]


@pytest.mark.parametrize(("variant", "decoder"), CACHE_CASES, ids=[*VARIANTS, *(f"redllm-{name}" for name in DECODER_STACKS)])
def test_cached_decoding_equals_the_full_forward(variant, decoder):
    """Prefill three target tokens, then one at a time: the cross half of the cache keeps every
    encoder key in every layer, whatever the decoder layer's own state is (window, recurrence)."""
    model, (ids, mask, labels) = _model(variant, **decoder), _batch()
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        first = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :3], use_cache=True)
        cache = first.past_key_values
        assert isinstance(cache, T.EncoderDecoderCache)
        steps = [first.logits]
        encoder_outputs = (first.encoder_last_hidden_state,)
        for t in range(3, 5):  # then one token at a time, the encoder's keys read from the cache
            out = model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=decoder_ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("variant", "decoder"), CACHE_CASES, ids=[*VARIANTS, *(f"redllm-{name}" for name in DECODER_STACKS)])
def test_generate_greedy_sampling_and_beams_and_padding_changes_nothing(variant, decoder):
    model, (ids, mask, _) = _model(variant, **decoder), _batch()
    greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    alone = model.generate(input_ids=ids[1:, :5], max_new_tokens=6, do_sample=False)
    assert torch.equal(greedy[1, : alone.shape[1]], alone[0])  # the padded row decodes as it does alone
    torch.manual_seed(0)
    sampled = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=5)
    beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    assert sampled.shape[0] == 2 and beams.shape[0] == 4
    # Greedy decoding is the argmax of a cache-free forward, token by token.
    sequence = greedy[:, :1]
    with torch.no_grad():
        for _ in range(greedy.shape[1] - 1):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=sequence).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    finished = (greedy == model.config.eos_token_id).cumsum(1) > 0
    assert torch.equal(greedy[~finished], sequence[~finished])


def test_redllm_positions_continue_from_the_encoder_and_match_a_rotation_by_hand():
    """A decoder query at target step t of a row with n real input tokens turns by angle (n + t) * f
    and an encoder key at input position j by j * f; the score is the same as the unrotated dot
    product turned by (n + t - j) * f."""
    model, (_, mask, labels) = _model("redllm"), _batch()
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    positions = model.model._continued_positions(mask, torch.zeros(2, 7, 32), decoder_ids, None, None)
    assert positions.tolist() == [[7, 8, 9, 10, 11], [5, 6, 7, 8, 9]]
    rotary = model.model.decoder.rotary_emb
    query, key = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    q_cos, q_sin = rotary(query, torch.tensor([[9]]))
    k_cos, k_sin = rotary(key, torch.tensor([[4]]))
    from hf_llmarch.modules.rotary import apply_rotary_one

    turned = (apply_rotary_one(query, q_cos, q_sin) * apply_rotary_one(key, k_cos, k_sin)).sum()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    angle = (9 - 4) * inv_freq  # relative angle per frequency pair (halves layout)
    q1, q2, k1, k2 = query.flatten()[:4], query.flatten()[4:], key.flatten()[:4], key.flatten()[4:]
    by_hand = ((q1 * k1 + q2 * k2) * torch.cos(angle) + (q1 * k2 - q2 * k1) * torch.sin(angle)).sum()
    torch.testing.assert_close(turned, by_hand, rtol=1e-5, atol=1e-6)


def test_redllm_cross_attention_depends_on_the_continued_positions():
    """The guard against cross-attention silently running without positions: shifting the decoder's
    positions changes the logits only through RoPE."""
    model, (ids, mask, labels) = _model("redllm"), _batch()
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        continued = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        from_zero = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_position_ids=torch.arange(5)[None]).logits
    assert not torch.allclose(continued, from_zero, atol=1e-4)


def test_text2text_pipeline_decodes_what_generate_gives():
    """transformers 5 removed the task; importing hf_llmarch registers it again."""
    model = _model("t5", vocab_size=29)
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), pad_token="<pad>", eos_token="</s>")
    out = T.pipeline("text2text-generation", model=model, tokenizer=tokenizer)(["a b c d", "e f"], max_new_tokens=4, do_sample=False)
    expected = model.generate(**tokenizer("a b c d", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out[0][0]["generated_text"] == tokenizer.decode(expected[0], skip_special_tokens=True)
    assert len(out) == 2


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, **{chr(ord("a") + i): i + 2 for i in range(26)}, "[UNK]": 28}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.parametrize("variant", ["redllm", "t5"])
def test_trains_with_gradient_checkpointing_saves_loads_and_takes_lora(variant, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = _model(variant).train()
    motifs = torch.randint(2, 100, (64, 4), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row.repeat(2), "labels": row} for row in motifs]  # copy the input's first half
    args = T.TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=60, per_device_train_batch_size=16, lr_scheduler_type="constant",
                               gradient_checkpointing=True, **CPU_TRAINING)
    trainer = T.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < 0.7 * losses[0], losses
    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "saved").eval()
    ids, mask, labels = _batch()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, labels=labels).logits
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask, labels=labels).logits, base)
    peft_model = get_peft_model(reloaded, LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, init_lora_weights=False))
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, attention_mask=mask, labels=labels).logits
        assert (adapted - base).abs().max() > 1e-4
        merged = peft_model.merge_and_unload()(input_ids=ids, attention_mask=mask, labels=labels).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: LlmArchEncoderConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, cross_attention=True), "cross_attention"),
        (lambda: LlmArchSeq2SeqConfig(**BASE | dict(cross_attention=False)), "cross_attention"),
        (lambda: LlmArchSeq2SeqConfig(**BASE | VARIANTS["t5"] | dict(relative_attention_num_buckets=1)), "relative_attention_num_buckets"),
        (lambda: LlmArchSeq2SeqConfig(**BASE | dict(encoder_layer_pattern="(mamba/mlp)x2")), "encoder_layer_pattern"),
        (lambda: LlmArchSeq2SeqConfig(**BASE | dict(continuous_positions=True, position_embedding_type="learned")), "continuous_positions"),
        (lambda: LlmArchSeq2SeqConfig(**BASE | dict(decoder_start_token_id=None)), "decoder_start_token_id"),
    ],
)
def test_bad_encoder_decoder_configs_are_named(build, field):
    with pytest.raises(ValueError, match=field):
        build()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_cache_generates_the_dynamic_cache_tokens(variant):
    """A static cache's masks span all its slots: T5's position bias is sized to them, not to the filled keys."""
    model, (ids, mask, _) = _model(variant), _batch()
    dynamic = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    static = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_redllm_decodes_a_left_padded_input_from_its_encoder_outputs_as_the_row_alone():
    """generate() hands the decoder the encoder's outputs, not its ids: the cross-attention keys must
    still turn by the input's real-token positions."""
    model, (ids, _, labels) = _model("redllm"), _batch()
    padded = torch.cat([torch.zeros(1, 2, dtype=ids.dtype), ids[:1]], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=ids.dtype), torch.ones_like(ids[:1])], dim=1)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels[:1])
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=padded, attention_mask=mask)
        batched = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        alone = model(input_ids=ids[:1], decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    generated = model.generate(input_ids=padded, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, model.generate(input_ids=ids[:1], max_new_tokens=6, do_sample=False))
