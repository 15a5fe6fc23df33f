"""The encoder family (BERT, RoBERTa, ALBERT and ELECTRA presets) end to end: every head trains,
Trainer with gradient checkpointing learns MLM from the collator, LoRA changes and merges,
save/load is exact, ELECTRA's generator and discriminator share embeddings, bad configs are named."""

import pytest
import torch
import transformers as T

import hf_llmarch
from hf_llmarch.data import MLMCollator
from hf_llmarch.models.electra import ElectraPretrainer
from hf_llmarch.models.encoder import LlmArchEncoderConfig
from tests.conftest import CPU_TRAINING, logged_losses

PRESETS = ["bert-tiny", "roberta-tiny", "albert-tiny", "electra-tiny"]
MASK_ID = 255  # the tiny presets' byte vocabulary has no mask token: the tests reserve byte 255
HEAD_CLASSES = {
    "AutoModelForMaskedLM": dict(labels=lambda ids: ids),
    "AutoModelForPreTraining": dict(labels=lambda ids: ids),
    "AutoModelForSequenceClassification": dict(labels=lambda ids: torch.tensor([0, 2])),
    "AutoModelForTokenClassification": dict(labels=lambda ids: ids % 3),
    "AutoModelForQuestionAnswering": dict(start_positions=lambda ids: torch.tensor([1, 2]), end_positions=lambda ids: torch.tensor([3, 4])),
}


def _config(preset: str, **overrides):
    return hf_llmarch.load_preset(preset, **dict(hidden_dropout=0.0, attention_dropout=0.0, num_labels=3) | overrides)


def _ids(batch=2, length=12, seed=0):
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("auto_class", list(HEAD_CLASSES))
def test_every_head_computes_a_loss_that_reaches_every_parameter(preset, auto_class):
    config = _config(preset, num_labels=2 if auto_class == "AutoModelForQuestionAnswering" else 3)
    torch.manual_seed(0)
    model = getattr(T, auto_class).from_config(config)
    ids = _ids()
    targets = {name: make(ids) for name, make in HEAD_CLASSES[auto_class].items()}
    if auto_class == "AutoModelForPreTraining" and config.pair_task:
        targets["next_sentence_label" if config.pair_task == "nsp" else "sentence_order_label"] = torch.tensor([0, 1])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **targets)
    out.loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused, unused


@pytest.mark.parametrize("preset", PRESETS)
def test_multiple_choice_scores_each_choice(preset):
    model = T.AutoModelForMultipleChoice.from_config(_config(preset)).eval()
    ids = _ids(batch=3).view(1, 3, 12).expand(2, 3, 12)
    out = model(input_ids=ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


@pytest.mark.parametrize("preset", PRESETS)
def test_mlm_trains_with_gradient_checkpointing_then_saves_loads_and_takes_lora(preset, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = T.AutoModelForMaskedLM.from_config(_config(preset))
    motifs = torch.randint(0, 200, (64, 4), generator=torch.Generator().manual_seed(0)).repeat(1, 6)
    data = [{"input_ids": row} for row in motifs]
    collator = MLMCollator(mask_token_id=MASK_ID, pad_token_id=model.config.pad_token_id, vocab_size=250, generator=torch.Generator().manual_seed(0))
    args = T.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=150, per_device_train_batch_size=16, lr_scheduler_type="constant",
        gradient_checkpointing=True, **CPU_TRAINING,
    )
    trainer = T.Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < 0.7 * losses[0], losses  # a masked token is recoverable from its motif's repeats

    model.eval().save_pretrained(tmp_path / "saved")
    reloaded = T.AutoModelForMaskedLM.from_pretrained(tmp_path / "saved").eval()
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        assert torch.equal(reloaded(ids).logits, base)
    peft_model = get_peft_model(reloaded, LoraConfig(r=4, init_lora_weights=False))
    assert peft_model.peft_config["default"].target_modules  # our registered defaults cover the encoder
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        assert (adapted - base).abs().max() > 1e-4
        merged = peft_model.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


def test_albert_shares_one_block_across_its_layers():
    shared = T.AutoModel.from_config(_config("albert-tiny"))
    unshared = T.AutoModel.from_config(_config("albert-tiny", num_layer_groups=None))
    assert shared.config.num_hidden_layers == 4 and len(shared.layers) == 1 and len(unshared.layers) == 4
    block = sum(p.numel() for p in shared.layers[0].parameters())
    assert sum(p.numel() for p in unshared.parameters()) - sum(p.numel() for p in shared.parameters()) == 3 * block


def test_electra_generator_and_discriminator_share_embeddings_and_learn(tmp_path):
    torch.manual_seed(0)
    trainer_model = ElectraPretrainer.from_config(_config("electra-tiny"), sampling_generator=torch.Generator().manual_seed(0))
    generator, discriminator = trainer_model.generator, trainer_model.discriminator
    assert generator.config.hidden_size == discriminator.config.hidden_size // 4
    assert generator.model.embed_tokens is discriminator.model.embed_tokens
    assert generator.lm_head.weight is discriminator.model.embed_tokens.weight
    motifs = torch.randint(0, 200, (64, 4), generator=torch.Generator().manual_seed(0)).repeat(1, 6)
    collator = MLMCollator(mask_token_id=MASK_ID, pad_token_id=257, vocab_size=250, mask_replace_prob=0.85, random_replace_prob=0.0,
                           generator=torch.Generator().manual_seed(1))
    batch = collator([{"input_ids": row} for row in motifs[:8]])
    out = trainer_model(**batch)
    masked = batch["labels"] != -100
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    assert torch.equal(out.corrupted_ids[~masked], original[~masked])  # only masked positions are resampled
    assert torch.equal(out.rtd_labels, (out.corrupted_ids != original).long())
    torch.testing.assert_close(out.loss, out.mlm_loss + 50 * out.rtd_loss)

    args = T.TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=40, per_device_train_batch_size=16, lr_scheduler_type="constant", **CPU_TRAINING)
    trainer = T.Trainer(model=trainer_model, args=args, train_dataset=[{"input_ids": row} for row in motifs], data_collator=collator)
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < losses[0], losses
    trainer_model.save_pretrained(tmp_path / "electra")
    reloaded = T.AutoModelForMaskedLM.from_pretrained(tmp_path / "electra" / "generator")
    assert torch.equal(reloaded.model.embed_tokens.weight, discriminator.model.embed_tokens.weight)


def test_electra_refuses_embeddings_it_cannot_share():
    from hf_llmarch.models.encoder_heads import LlmArchEncoderForMaskedLM, LlmArchEncoderForReplacedTokenDetection

    discriminator = LlmArchEncoderForReplacedTokenDetection(_config("electra-tiny"))
    generator = LlmArchEncoderForMaskedLM(_config("electra-tiny", embedding_size=16))
    with pytest.raises(ValueError, match="embedding_size"):
        ElectraPretrainer(generator, discriminator)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(attention_mask_kind="causal"), "attention_mask_kind"),
        (dict(classifier_head="cls"), "classifier_head"),
        (dict(has_pooler=False, classifier_head="pooler"), "has_pooler"),
        (dict(pair_task="mlm"), "pair_task"),
        (dict(classifier_activation="wiggle"), "classifier_activation"),
        (dict(layer_pattern="(mamba/mlp)x2"), "mixer_types"),
    ],
)
def test_bad_encoder_config_is_named(overrides, field):
    with pytest.raises(ValueError, match=field):
        LlmArchEncoderConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, **overrides)


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels=3"):
        T.AutoModelForQuestionAnswering.from_config(_config("bert-tiny"))
