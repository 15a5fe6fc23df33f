"""DeepSeek-V3 multi-token prediction: the loss (weighted, returned apart, blind to pads and packed
boundaries), training that teaches it, self-speculative decoding through generate() that gives
exactly greedy's tokens, and checkpoints that must hold the MTP weights they claim."""

import pytest
import torch
from conftest import CPU_TRAINING, RepeatTask, tiny_model
from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

import hf_llmarch
from hf_llmarch import compat

NO_ROUTER_LOSS = dict(router_seq_aux_loss_coef=0.0, router_aux_loss_coef=0.0)


def _mtp_model(depth=1, **overrides):
    return tiny_model("deepseek", num_nextn_predict_layers=depth, **overrides)


def test_mtp_loss_is_returned_apart_and_added_with_its_weight():
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    losses = {}
    for weight in (0.0, 0.5):
        out = _mtp_model(depth=2, mtp_loss_weight=weight, **NO_ROUTER_LOSS)(ids, labels=ids)
        losses[weight] = (out.loss, out.mtp_loss)
    assert losses[0.5][1] > 0 and torch.equal(losses[0.5][1], losses[0.0][1])
    torch.testing.assert_close(losses[0.5][0] - losses[0.0][0], 0.5 * losses[0.5][1])
    assert _mtp_model()(ids).mtp_loss is None  # no labels: no MTP work


def test_gradients_reach_every_mtp_module():
    model = _mtp_model(depth=2).train()
    ids = torch.randint(3, 250, (2, 12))
    model(ids, labels=ids).loss.backward()
    for name, param in model.mtp.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name


def _sequences():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (11, 7)]


def test_mtp_loss_ignores_padding_and_packed_boundaries():
    """A right-padded batch, a left-padded batch and a packed row of the same two sequences score the
    same MTP targets: no target is predicted from a pad or across a sequence boundary."""
    model = _mtp_model(depth=2, **NO_ROUTER_LOSS)
    sequences = _sequences()
    width = max(map(len, sequences))
    batches = []
    for side in ("right", "left"):
        ids, mask = torch.zeros(2, width, dtype=torch.long), torch.zeros(2, width, dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            ids[row, span], mask[row, span] = torch.tensor(seq), 1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    batches.append(DataCollatorWithFlattening()([{"input_ids": s} for s in sequences]))
    with torch.no_grad():
        losses = [model(**batch).mtp_loss for batch in batches]
    torch.testing.assert_close(losses[0], losses[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[1], losses[2], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DeepSeek model with one MTP module, trained on repeated 4-token motifs (the token two
    ahead is learnable, so drafts get accepted)."""
    model = _mtp_model(mtp_loss_weight=1.0).train()
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("mtp")), max_steps=80, per_device_train_batch_size=8,
        lr_scheduler_type="constant", **CPU_TRAINING,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RepeatTask())
    batch = {k: torch.stack([RepeatTask()[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        before = model.eval()(**batch).mtp_loss
    trainer.train()
    with torch.no_grad():
        after = model.eval()(**batch).mtp_loss
    return model.eval(), before, after


def test_training_teaches_the_mtp_module(trained):
    _, before, after = trained
    assert after < 0.5 * before, (before, after)


def test_self_speculative_decoding_equals_greedy_and_saves_forwards(trained):
    model, _, _ = trained
    prompt = RepeatTask(seed=7)[0]["input_ids"][:6][None]
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    greedy = model.generate(prompt, **kwargs)
    speculative = model.generate(prompt, custom_generate=hf_llmarch.mtp_generate, **kwargs)
    assert torch.equal(speculative, greedy)
    stats = model.last_mtp_generation
    assert stats["acceptance_rate"] > 0.5, stats
    assert stats["main_forwards"] < 24, stats  # accepted drafts: fewer main-model forwards than tokens


def test_speculative_decoding_stops_where_greedy_does(trained):
    """An eos inside an accepted pair ends the sequence at that eos, as greedy's would."""
    model, _, _ = trained
    prompt = RepeatTask(seed=7)[0]["input_ids"][:6][None]
    greedy = model.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
    eos = int(greedy[0, prompt.shape[1] + 5])
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=eos)
    speculative = model.generate(prompt, custom_generate=hf_llmarch.mtp_generate, **kwargs)
    assert torch.equal(speculative, model.generate(prompt, **kwargs)) and speculative[0, -1] == eos


@pytest.mark.parametrize(
    "build, kwargs, match",
    [
        (lambda: tiny_model("deepseek"), {}, "num_nextn_predict_layers=0"),
        (_mtp_model, {"do_sample": True}, "greedy"),
        (lambda: tiny_model("llama", num_nextn_predict_layers=1), {"batch": 2}, "one sequence at a time"),
    ],
)
def test_speculative_decoding_refuses_what_it_cannot_do(build, kwargs, match):
    batch = kwargs.pop("batch", 1)
    with pytest.raises(ValueError, match=match):
        build().generate(torch.randint(3, 250, (batch, 5)), max_new_tokens=4, custom_generate=hf_llmarch.mtp_generate, **kwargs)


def test_mtp_needs_an_attention_layer_last():
    with pytest.raises(ValueError, match="num_nextn_predict_layers=1 needs an attention layer last"):
        tiny_model("mamba", num_nextn_predict_layers=1)


def test_save_and_reload_keeps_the_mtp_modules_and_refuses_missing_ones(trained, tmp_path):
    model, _, _ = trained
    model.save_pretrained(tmp_path / "with")
    reloaded = type(model).from_pretrained(tmp_path / "with")
    ids = torch.randint(3, 250, (1, 9))
    assert torch.equal(reloaded(ids, labels=ids).mtp_loss, model(ids, labels=ids).mtp_loss)
    plain = tiny_model("deepseek")
    plain.save_pretrained(tmp_path / "without")
    with pytest.raises(ValueError, match=r"num_nextn_predict_layers=1 but the checkpoint holds no weights for \['mtp\."):
        type(plain).from_pretrained(tmp_path / "without", num_nextn_predict_layers=1)


def test_speculative_decoding_with_sparse_attention_layers():
    """DeepSeek-V3.2 has MTP too: the drafter's cache keeps its indexer's keys like the stack's."""
    model = _mtp_model(layer_pattern="dsa/mlp (dsa/moe)x2", index_n_heads=4, index_head_dim=16, index_topk=3)
    prompt = torch.randint(3, 250, (1, 7))
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, custom_generate=hf_llmarch.mtp_generate, **kwargs), model.generate(prompt, **kwargs))


def test_a_depth_without_targets_adds_zero_not_nan():
    """Three tokens, depth 2: its one prediction would start from a pad; no target, so 0 rather than NaN."""
    ids = torch.randint(3, 250, (1, 3))
    out = _mtp_model(depth=2)(ids, attention_mask=torch.tensor([[0, 1, 1]]), labels=ids)
    assert torch.isfinite(out.loss) and torch.isfinite(out.mtp_loss)


def test_rejected_drafts_leave_no_keys_behind():
    """An untrained drafter is mostly rejected: each rejection must crop its keys, so the cache ends
    holding exactly the tokens fed back, and the output is still greedy's."""
    model = _mtp_model()
    prompt = torch.randint(3, 250, (1, 7))
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    out = model.generate(prompt, custom_generate=hf_llmarch.mtp_generate, return_dict_in_generate=True, **kwargs)
    assert model.last_mtp_generation["accepted"] < model.last_mtp_generation["drafted"]
    assert compat.output_cache(out).get_seq_length() == out.sequences.shape[1] - 1
    assert torch.equal(out.sequences, model.generate(prompt, **kwargs))
