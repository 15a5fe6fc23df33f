"""BERT, RoBERTa, ALBERT and ELECTRA convert to llmarch_encoder head by head and back: logits
within 1e-4 at every real position of a right-padded batch, an exact round trip, the pipelines,
and refusals that name the field or tensor."""

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import hf_llmarch  # noqa: F401  (registers the families)
from hf_llmarch.convert import CheckpointError, from_hf, save_from_hf, save_to_hf, to_hf
from hf_llmarch.models import encoder_heads as heads
from hf_llmarch.models.encoder import LlmArchEncoderModel

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40)
NATIVE_CONFIGS = {
    "bert": lambda **kw: T.BertConfig(**SMALL | kw),
    "roberta": lambda **kw: T.RobertaConfig(**SMALL | dict(pad_token_id=1) | kw),
    "albert": lambda **kw: T.AlbertConfig(**SMALL | dict(embedding_size=16, num_hidden_groups=1) | kw),
    "electra": lambda **kw: T.ElectraConfig(**SMALL | dict(embedding_size=16) | kw),
}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}
HEADS = ["Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice"]
CASES = [(source, head) for source in NATIVE_CONFIGS for head in HEADS if hasattr(T, PREFIX[source] + head)]
OURS = {
    "Model": LlmArchEncoderModel, "ForMaskedLM": heads.LlmArchEncoderForMaskedLM, "ForPreTraining": heads.LlmArchEncoderForPreTraining,
    "ForSequenceClassification": heads.LlmArchEncoderForSequenceClassification,
    "ForTokenClassification": heads.LlmArchEncoderForTokenClassification,
    "ForQuestionAnswering": heads.LlmArchEncoderForQuestionAnswering, "ForMultipleChoice": heads.LlmArchEncoderForMultipleChoice,
}
OUTPUT_NAMES = {"sop_logits": "seq_relationship_logits"}


def _native(source: str, head: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    labels = dict(num_labels=2 if head in ("ForQuestionAnswering", "ForPreTraining") else 3)
    return getattr(T, PREFIX[source] + head)(NATIVE_CONFIGS[source](**labels | config)).eval()


def _padded_batch(source: str, head: str):
    """Two rows, the second right-padded with the source's pad id; [B, C, T] for multiple choice."""
    pad = 1 if source == "roberta" else 0
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad, 0
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=(torch.arange(9) >= 4).long().expand(2, 9))
    if head == "ForMultipleChoice":
        batch = {key: value[None].expand(2, 2, 9).contiguous() for key, value in batch.items()}
    return batch, mask.bool()


def _assert_outputs_match(native_out, our_out, real, names=OUTPUT_NAMES):
    for name, theirs in native_out.items():
        if name in ("hidden_states", "attentions"):
            continue
        ours = our_out[names.get(name, name)]
        if theirs.ndim >= 2 and tuple(theirs.shape[:2]) == tuple(real.shape):  # per token: real positions only
            theirs, ours = theirs[real], ours[real]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize(("source", "head"), CASES)
def test_native_encoder_converts_with_parity_and_round_trips_exactly(source, head):
    native = _native(source, head)
    ours = from_hf(native)
    expected_class = heads.LlmArchEncoderForReplacedTokenDetection if (source, head) == ("electra", "ForPreTraining") else OURS[head]
    assert type(ours) is expected_class
    batch, real = _padded_batch(source, head)
    with torch.no_grad():
        _assert_outputs_match(native(**batch), ours(**batch), real)
    back = to_hf(ours)
    assert type(back) is type(native)
    theirs, again = native.state_dict(), back.state_dict()
    assert set(theirs) == set(again)
    for key in theirs:
        assert torch.equal(theirs[key], again[key]), key


@pytest.mark.parametrize("source", list(NATIVE_CONFIGS))
def test_checkpoint_directories_convert_both_ways(source, tmp_path):
    """Through files: transformers saves a tied output weight once, and our export writes what
    `from_pretrained` of the native class reads without missing or unexpected keys."""
    head = "ForPreTraining" if source != "roberta" else "ForMaskedLM"
    native = _native(source, head)
    native.save_pretrained(tmp_path / "native")
    save_from_hf(tmp_path / "native", tmp_path / "ours")
    ours = T.AutoModelForPreTraining.from_pretrained(tmp_path / "ours") if head == "ForPreTraining" and source != "electra" else None
    ours = ours or from_hf(tmp_path / "native")
    save_to_hf(tmp_path / "ours", tmp_path / "back")
    back, info = getattr(T, PREFIX[source] + head).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch, real = _padded_batch(source, head)
    with torch.no_grad():
        _assert_outputs_match(native(**batch), ours(**batch), real)
        _assert_outputs_match(native(**batch), back.eval()(**batch), real, names={})


def test_a_stray_tensor_and_a_disagreeing_tied_bias_are_refused(tmp_path):
    native = _native("bert", "ForMaskedLM")
    native.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file(tensors | {"bert.extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="bert.extra.weight"):
        from_hf(tmp_path)
    bias = tensors["cls.predictions.bias"]
    save_file(tensors | {"cls.predictions.decoder.bias": bias + 1}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="one tied output bias"):
        from_hf(tmp_path)


@pytest.mark.parametrize(
    ("source", "config", "field"),
    [
        ("albert", dict(inner_group_num=2), "inner_group_num"),
        ("electra", dict(summary_type="last"), "summary_type"),
        ("roberta", dict(hidden_act="relu"), "hidden_act"),
        ("bert", dict(is_decoder=True), "is_decoder"),
    ],
)
def test_unconvertible_native_settings_are_named(source, config, field):
    native_config = NATIVE_CONFIGS[source](**config)
    native = getattr(T, PREFIX[source] + "Model")(native_config)
    with pytest.raises(ValueError, match=field):
        from_hf(native)


def test_export_refuses_what_the_target_cannot_hold():
    bert = from_hf(_native("bert", "ForPreTraining"))
    with pytest.raises(ValueError, match="has_pooler"):
        to_hf(from_hf(_native("bert", "ForMaskedLM")), target="electra")
    with pytest.raises(ValueError, match="sentence-pair"):
        to_hf(bert, target="roberta")
    with pytest.raises(ValueError, match="classifier_head"):
        to_hf(from_hf(_native("bert", "ForSequenceClassification")), target="roberta")
    with pytest.raises(ValueError, match="ELECTRA's discriminator"):
        to_hf(from_hf(_native("electra", "ForPreTraining")), target="bert")


def _tokenizer():
    words = "the cat sat on mat a dog ran in park big small red blue".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return T.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})


@pytest.mark.parametrize(
    ("task", "head", "text"),
    [
        ("fill-mask", "ForMaskedLM", "the cat [MASK] on the mat"),
        ("text-classification", "ForSequenceClassification", "the dog ran in the park"),
        ("token-classification", "ForTokenClassification", "the big red dog"),
    ],
)
def test_pipelines_give_the_native_results(task, head, text):
    tokenizer = _tokenizer()
    native = _native("bert", head, vocab_size=len(tokenizer))
    ours = from_hf(native)
    theirs = T.pipeline(task, model=native, tokenizer=tokenizer)(text)
    mine = T.pipeline(task, model=ours, tokenizer=tokenizer)(text)
    assert [r.get("token", r.get("label", r.get("entity"))) for r in mine] == [r.get("token", r.get("label", r.get("entity"))) for r in theirs]
    assert [float(r["score"]) for r in mine] == pytest.approx([float(r["score"]) for r in theirs], abs=1e-5)
