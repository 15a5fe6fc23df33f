"""T5 and BART convert to llmarch_seq2seq and back: logits within 1e-4 given decoder inputs (padded
encoder batch), identical greedy and beam generations, exact round trips, through files too; and
where transformers' T5 fails (a decoder deeper than the encoder), ours generates."""

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import hf_llmarch  # noqa: F401  (registers the families)
from hf_llmarch import compat
from hf_llmarch.convert import CheckpointError, from_hf, save_from_hf, save_to_hf, to_hf
from hf_llmarch.models.seq2seq import LlmArchForConditionalGeneration, LlmArchSeq2SeqModel

T5_SMALL = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=20)
BART_SMALL = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40)
CASES = {
    "t5_v1_1_gated": lambda: T.T5ForConditionalGeneration(T.T5Config(**T5_SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "t5_v1_0_scaled_output": lambda: T.T5ForConditionalGeneration(T.T5Config(**T5_SMALL)),
    "t5_model": lambda: T.T5Model(T.T5Config(**T5_SMALL)),
    "bart": lambda: T.BartForConditionalGeneration(T.BartConfig(**BART_SMALL)),
    "bart_scaled_embedding_model": lambda: T.BartModel(T.BartConfig(**BART_SMALL, scale_embedding=True)),
}


def _native(case: str):
    torch.manual_seed(0)
    native = CASES[case]().eval()
    if hasattr(native, "final_logits_bias"):
        native.final_logits_bias.normal_()  # zeros in a fresh model would not test its mapping
    return native


def _inputs():
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0
    decoder_ids = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(2))
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)


def _generate(model, beams: int, start: int):
    inputs = {k: v for k, v in _inputs().items() if k != "decoder_input_ids"}
    return model.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=beams, decoder_start_token_id=start)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_generation_and_exact_round_trip(case):
    native = _native(case)
    ours = from_hf(native)
    assert type(ours) is (LlmArchSeq2SeqModel if case.endswith("model") else LlmArchForConditionalGeneration)
    with torch.no_grad():
        theirs, mine = native(**_inputs()), ours(**_inputs())
    key = "logits" if "logits" in theirs else "last_hidden_state"
    torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-4)
    if key == "logits":
        start = ours.config.decoder_start_token_id
        for beams in (1, 3):
            assert torch.equal(_generate(ours, beams, start), _generate(native, beams, start)), beams
    back = to_hf(ours)
    assert type(back) is type(native)
    expected, again = native.state_dict(), back.state_dict()
    assert set(expected) == set(again)
    for name in expected:
        assert torch.equal(expected[name], again[name]), name


@pytest.mark.parametrize("case", ["t5_v1_1_gated", "bart"])
def test_checkpoint_directories_convert_both_ways(case, tmp_path):
    native = _native(case)
    native.save_pretrained(tmp_path / "native")
    save_from_hf(tmp_path / "native", tmp_path / "ours")
    ours = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours").eval()
    assert ours.generation_config.decoder_start_token_id == native.generation_config.decoder_start_token_id
    save_to_hf(tmp_path / "ours", tmp_path / "back")
    back, info = type(native).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(ours(**_inputs()).logits, native(**_inputs()).logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(back.eval()(**_inputs()).logits, native(**_inputs()).logits, rtol=0, atol=0)


def test_ours_generates_where_transformers_t5_fails_with_a_deeper_decoder():
    """transformers sizes generate()'s cache by T5's num_layers (the encoder's), so a decoder with more
    layers indexes past it; ours describes the decoder in num_hidden_layers."""
    torch.manual_seed(0)
    native = T.T5ForConditionalGeneration(T.T5Config(**T5_SMALL | dict(num_decoder_layers=3))).eval()
    ours = from_hf(native)
    with pytest.raises(IndexError):
        _generate(native, 1, 0)
    generated = _generate(ours, 1, 0)
    sequence = generated[:, :1]
    with torch.no_grad():  # the same tokens as a cache-free argmax, step by step
        for _ in range(generated.shape[1] - 1):
            logits = native(**_inputs() | {"decoder_input_ids": sequence}).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    finished = (generated == 1).cumsum(1) > 0
    assert torch.equal(generated[~finished], sequence[~finished])


def test_a_disagreeing_copy_of_the_shared_table_is_refused(tmp_path):
    native = _native("bart")
    native.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    shared = tensors["model.shared.weight"]
    save_file(tensors | {"model.encoder.embed_tokens.weight": shared + 1}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="shared embedding"):
        from_hf(tmp_path)


def test_unconvertible_settings_are_named():
    native = T.BartModel(T.BartConfig(**BART_SMALL | dict(decoder_ffn_dim=48)))
    with pytest.raises(ValueError, match="encoder_ffn_dim"):
        from_hf(native)
    ours = from_hf(_native("bart"))
    with pytest.raises(ValueError, match="position_embedding_type"):
        to_hf(ours, target="t5")


def test_a_separate_t5_output_layer_is_kept_or_refused_never_dropped():
    """T5 v1.1 keeps its output layer apart from `shared`; transformers 5.24's T5 always ties them, so
    exporting a trained v1.1 must fail by name there, and keep the layer where transformers can."""
    ours = from_hf(_native("t5_v1_1_gated"))
    assert not ours.config.tie_word_embeddings
    with torch.no_grad():
        ours.lm_head.weight.add_(1.0)
    try:
        native = to_hf(ours)
    except ValueError as err:
        assert "lm_head.weight" in str(err)
    else:
        assert torch.equal(native.lm_head.weight, ours.lm_head.weight)


SWITCH_SMALL = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=2, num_heads=4, num_experts=4,
                    expert_capacity=3, encoder_sparse_step=2, decoder_sparse_step=1, relative_attention_num_buckets=8,
                    relative_attention_max_distance=20)


def test_switch_transformers_converts_with_its_experts_and_per_sequence_capacity():
    """Every other encoder layer and every decoder layer routes top-1 to plain ReLU experts, three tokens
    per expert and sequence: capacity drops happen in this batch, and both sides drop the same tokens."""
    # transformers before 5.24 drops no token whatever its capacity: compare there with room for all.
    capacity = 3 if compat.NATIVE_SWITCH_APPLIES_CAPACITY else 64
    torch.manual_seed(0)
    native = T.SwitchTransformersForConditionalGeneration(T.SwitchTransformersConfig(**SWITCH_SMALL | dict(expert_capacity=capacity))).eval()
    ours = from_hf(native)
    assert ours.config.encoder_layer_pattern == "(attn/mlp attn/moe)x2" and ours.config.layer_pattern == "(attn/moe)x2"
    with torch.no_grad():
        torch.testing.assert_close(ours(**_inputs()).logits, native(**_inputs()).logits, rtol=0, atol=1e-4)
    dropped = sum(layer.mlp.last_dropped_tokens.item() for layer in ours.model.encoder.layers if layer.ffn_type == "moe")
    assert (dropped > 0) == compat.NATIVE_SWITCH_APPLIES_CAPACITY
    for beams in (1, 3):
        assert torch.equal(_generate(ours, beams, 0), _generate(native, beams, 0))
    back = to_hf(ours)
    for name, tensor in native.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    labels = torch.randint(3, 99, (2, 5))
    out = ours.train()(**{k: v for k, v in _inputs().items() if k != "decoder_input_ids"}, labels=labels)
    assert out.aux_loss is not None and out.aux_loss > 0  # the routers' losses join the training loss


def test_switch_with_untied_stack_embeddings_is_refused():
    """transformers 5.24 leaves an untied Switch model's encoder, decoder and shared tables apart;
    ours has one table for both stacks, so the conversion names the table that differs."""
    torch.manual_seed(0)
    native = T.SwitchTransformersForConditionalGeneration(T.SwitchTransformersConfig(**SWITCH_SMALL | dict(tie_word_embeddings=False)))
    shared = native.shared.weight
    if torch.equal(native.encoder.embed_tokens.weight, shared) and torch.equal(native.decoder.embed_tokens.weight, shared):
        pytest.skip("this transformers ties the stack tables itself")
    with pytest.raises(CheckpointError, match="embed_tokens"):
        from_hf(native)
