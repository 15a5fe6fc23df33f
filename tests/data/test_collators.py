"""Pre-training collators (MLM, NSP, SOP, RTD, T5 span corruption, BART noising, prefix LM) against hand
computations on short literal examples."""

import inspect
import math
import re
from itertools import permutations

import pytest
import torch
from transformers import AlbertConfig, AlbertForPreTraining, BertConfig, BertForPreTraining

from hf_llmarch.data import (
    BartDenoisingCollator,
    MLMCollator,
    NSPCollator,
    PrefixLMCollator,
    PrefixToSeq2SeqCollator,
    SOPCollator,
    SpanCorruptionCollator,
    apply_span_corruption,
    compute_span_corruption_lengths,
    descending_sentinel_ids,
    document_rotation,
    make_nsp_pairs,
    make_sop_pairs,
    mask_tokens,
    random_spans_noise_mask,
    replaced_token_detection_labels,
    sample_infilling_span_lengths,
    sentence_permutation,
    split_for_encoder_decoder,
    text_infilling,
    token_deletion,
    token_masking,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
DOT = 5


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class FakeTokenizer:
    """The attributes the collators' ``from_tokenizer`` read: 200 tokens, ``<extra_id_i>`` = 199 - i as in T5."""

    pad_token_id, unk_token_id, mask_token_id = PAD, UNK, MASK
    cls_token_id = bos_token_id = CLS
    sep_token_id = eos_token_id = SEP
    all_special_ids = [PAD, UNK, CLS, SEP, MASK]

    def __len__(self):
        return 200

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return DOT if tokens == "." else UNK
        return [199 - int(t[len("<extra_id_"):-1]) for t in tokens]


class NoSentinelsTokenizer(FakeTokenizer):
    """Knows neither T5's sentinels nor a full stop."""

    def convert_tokens_to_ids(self, tokens):
        return UNK if isinstance(tokens, str) else [UNK] * len(tokens)


def test_mask_tokens_seeded_example():
    ids = torch.tensor([[CLS, 11, 12, 13, 14, 15, 16, SEP]])
    special = torch.tensor([[True, False, False, False, False, False, False, True]])
    # seed 0 draws: choice rand  .4963 .7682 .0885 .1320 .3074 .6341 .4901 .8964
    #               action rand  .4556 .6323 .3489 .4017 .0223 .1689 .2939 .5185
    #               randint(50)  6     18    44    33    26    19    41    4
    # chosen (< .5, not special): 2, 3, 4, 6; action < .2 mask, < .4 random, else unchanged
    inputs, labels = mask_tokens(ids, special, MASK, 50, 0.5, 0.2, 0.2, gen(0))
    assert inputs.tolist() == [[CLS, 11, 44, 13, MASK, 15, 41, SEP]]
    assert labels.tolist() == [[-100, -100, 12, 13, 14, -100, 16, -100]]


def test_mask_tokens_matches_its_draws():
    ids = torch.randint(10, 50, (4, 16), generator=gen(1))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    inputs, labels = mask_tokens(ids, special, MASK, 50, 0.3, 0.6, 0.3, gen(2))
    g = gen(2)
    chosen = (torch.rand(ids.shape, generator=g) < 0.3) & ~special
    action = torch.rand(ids.shape, generator=g)
    random_ids = torch.randint(50, ids.shape, generator=g)
    expected = torch.where(chosen & (action < 0.6), MASK, ids)
    expected = torch.where(chosen & (action >= 0.6) & (action < 0.9), random_ids, expected)
    assert torch.equal(inputs, expected)
    assert torch.equal(labels, torch.where(chosen, ids, -100))


def test_mask_tokens_corner_probabilities():
    ids = torch.tensor([[CLS, 11, 12, SEP]])
    special = torch.tensor([[True, False, False, True]])
    all_masked, labels = mask_tokens(ids, special, MASK, 50, 1.0, 1.0, 0.0, gen())
    assert all_masked.tolist() == [[CLS, MASK, MASK, SEP]]
    assert labels.tolist() == [[-100, 11, 12, -100]]
    unchanged, labels = mask_tokens(ids, special, MASK, 50, 1.0, 0.0, 0.0, gen())
    assert unchanged.tolist() == ids.tolist() and labels.tolist() == [[-100, 11, 12, -100]]
    randomised, _ = mask_tokens(ids, special, MASK, 1, 1.0, 0.0, 1.0, gen())  # vocab {0}
    assert randomised.tolist() == [[CLS, 0, 0, SEP]]


def test_mask_tokens_80_10_10_split():
    ids = torch.randint(10, 1000, (128, 512), generator=gen(3))
    special = torch.zeros_like(ids, dtype=torch.bool)
    inputs, labels = mask_tokens(ids, special, MASK, 1_000_000, generator=gen(4))
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.005
    masked = (inputs == MASK)[chosen].float().mean().item()
    kept = (inputs == ids)[chosen].float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(1 - masked - kept - 0.1) < 0.02
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_mlm_collator_pads_and_skips_specials():
    collator = MLMCollator(MASK, PAD, 50, (CLS, SEP), mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0)
    batch = collator([{"input_ids": [CLS, 11, 12, SEP]}, {"input_ids": torch.tensor([CLS, 13, SEP])}])
    assert batch["input_ids"].tolist() == [[CLS, MASK, MASK, SEP], [CLS, MASK, SEP, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100], [-100, 13, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_mlm_collator_is_reproducible_and_reads_the_tokenizer():
    examples = [{"input_ids": list(range(10, 60))}] * 3
    first = MLMCollator.from_tokenizer(FakeTokenizer(), generator=gen(5))(examples)
    second = MLMCollator.from_tokenizer(FakeTokenizer(), generator=gen(5))(examples)
    assert all(torch.equal(first[k], second[k]) for k in first)
    collator = MLMCollator.from_tokenizer(FakeTokenizer())
    assert (collator.mask_token_id, collator.pad_token_id, collator.vocab_size) == (MASK, PAD, 200)
    assert collator.special_token_ids == (PAD, UNK, CLS, SEP, MASK)


def test_nsp_layout_and_token_types():
    collator = NSPCollator(CLS, SEP, PAD)
    batch = collator([
        {"segment_a": [11, 12], "segment_b": [21, 22, 23], "next_sentence_label": 0},
        {"segment_a": [31], "segment_b": [41], "next_sentence_label": 1},
    ])
    assert batch["input_ids"].tolist() == [[CLS, 11, 12, SEP, 21, 22, 23, SEP], [CLS, 31, SEP, 41, SEP, PAD, PAD, PAD]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["next_sentence_label"].tolist() == [0, 1]
    assert "labels" not in batch


def test_nsp_truncates_the_longer_segment_first():
    collator = NSPCollator(CLS, SEP, PAD, max_length=8)  # 5 segment tokens: (6, 3) -> (3, 3) -> (3, 2)
    batch = collator([{"segment_a": [1, 2, 3, 4, 5, 6], "segment_b": [7, 8, 9], "next_sentence_label": 0}])
    assert batch["input_ids"].tolist() == [[CLS, 1, 2, 3, SEP, 7, 8, SEP]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]


def test_nsp_masks_segments_but_never_cls_or_sep():
    mlm = MLMCollator(MASK, PAD, 50, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
    batch = NSPCollator(CLS, SEP, PAD, mlm=mlm)([{"segment_a": [11, 12], "segment_b": [21], "next_sentence_label": 1}])
    assert batch["input_ids"].tolist() == [[CLS, MASK, MASK, SEP, MASK, SEP]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}


DOCUMENTS = [[[10, 11], [12], [13, 14]], [[20], [21, 22]]]


def test_make_nsp_pairs_real_and_random():
    real = make_nsp_pairs(DOCUMENTS, gen(), random_prob=0.0)
    assert real == [
        {"segment_a": [10, 11], "segment_b": [12], "next_sentence_label": 0},
        {"segment_a": [12], "segment_b": [13, 14], "next_sentence_label": 0},
        {"segment_a": [20], "segment_b": [21, 22], "next_sentence_label": 0},
    ]
    for seed in range(20):
        for example in make_nsp_pairs(DOCUMENTS, gen(seed), random_prob=1.0):
            assert example["next_sentence_label"] == 1
            own = next(doc for doc in DOCUMENTS if example["segment_a"] in doc)
            other = next(doc for doc in DOCUMENTS if doc is not own)
            assert example["segment_b"] in other
    labels = [ex["next_sentence_label"] for s in range(200) for ex in make_nsp_pairs(DOCUMENTS, gen(s))]
    assert 0.4 < sum(labels) / len(labels) < 0.6


def test_sop_pairs_and_collator():
    assert make_sop_pairs(DOCUMENTS, gen(), swap_prob=1.0)[0] == {
        "segment_a": [12], "segment_b": [10, 11], "sentence_order_label": 1,
    }
    in_order = make_sop_pairs(DOCUMENTS, gen(), swap_prob=0.0)
    pairs = [(ex["segment_a"], ex["segment_b"], ex["sentence_order_label"]) for ex in in_order]
    assert pairs == [([10, 11], [12], 0), ([12], [13, 14], 0), ([20], [21, 22], 0)]
    batch = SOPCollator(CLS, SEP, PAD)(make_sop_pairs(DOCUMENTS, gen(), swap_prob=1.0)[:1])
    assert batch["input_ids"].tolist() == [[CLS, 12, SEP, 10, 11, SEP]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert batch["sentence_order_label"].tolist() == [1] and "next_sentence_label" not in batch


def test_pair_labels_are_the_transformers_names_and_train():
    assert "sentence_order_label" in inspect.signature(AlbertForPreTraining.forward).parameters
    assert "next_sentence_label" in inspect.signature(BertForPreTraining.forward).parameters
    tiny = dict(vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    for model, collator_cls, examples in (
        (AlbertForPreTraining(AlbertConfig(embedding_size=8, **tiny)), SOPCollator, make_sop_pairs(DOCUMENTS, gen())),
        (BertForPreTraining(BertConfig(**tiny)), NSPCollator, make_nsp_pairs(DOCUMENTS, gen())),
    ):
        collator = collator_cls.from_tokenizer(FakeTokenizer(), mlm_probability=0.5, generator=gen())
        assert torch.isfinite(model(**collator(examples)).loss)


def test_replaced_token_detection_labels():
    original = torch.tensor([[5, 6, 7, 8], [5, 6, PAD, PAD]])
    corrupted = torch.tensor([[5, 9, 7, 3], [4, 6, PAD, PAD]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = replaced_token_detection_labels(original, corrupted, attention_mask)
    assert labels.tolist() == [[0, 1, 0, 1], [1, 0, -100, -100]] and labels.dtype == torch.long


def test_apply_span_corruption_literal():
    ids = list(range(10, 20))
    noise = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    inputs, labels = apply_span_corruption(ids, noise, (99, 98, 97), eos_token_id=1)
    assert inputs.tolist() == [10, 11, 99, 14, 15, 16, 98, 18, 19, 1]
    assert labels.tolist() == [99, 12, 13, 98, 17, 1]
    inputs, labels = apply_span_corruption(ids, [1, 1] + [0] * 7 + [1], (99, 98), eos_token_id=1)
    assert inputs.tolist() == [99, 12, 13, 14, 15, 16, 17, 18, 98, 1]
    assert labels.tolist() == [99, 10, 11, 98, 19, 1]


@pytest.mark.parametrize("length, noise, spans", [(10, 2, 1), (100, 15, 5), (512, 77, 26), (568, 85, 28)])
def test_random_spans_noise_mask_counts(length, noise, spans):
    for seed in range(5):
        mask = random_spans_noise_mask(length, 0.15, 3.0, gen(seed))
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        assert int(mask.sum()) == noise and int(starts.sum()) == spans
        assert not mask[0] and mask[-1]
    same_seed = random_spans_noise_mask(length, 0.15, 3.0, gen(7)), random_spans_noise_mask(length, 0.15, 3.0, gen(7))
    assert torch.equal(*same_seed)


def test_random_spans_noise_mask_short_lengths():
    assert random_spans_noise_mask(1, generator=gen()).tolist() == [False]
    assert random_spans_noise_mask(2, generator=gen()).tolist() == [False, True]


def test_compute_span_corruption_lengths_matches_t5():
    # 568 raw tokens: 85 noise in 28 spans -> 483 + 28 + 1 = 512 inputs, 85 + 28 + 1 = 114 targets
    assert compute_span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    mask = random_spans_noise_mask(568, 0.15, 3.0, gen())
    inputs, labels = apply_span_corruption(torch.arange(568) + 200, mask, descending_sentinel_ids(199), 1)
    assert (len(inputs), len(labels)) == (512, 114)


def test_span_corruption_collator():
    collator = SpanCorruptionCollator.from_tokenizer(FakeTokenizer(), generator=gen(3))
    assert collator.sentinel_ids == descending_sentinel_ids(199, 100) and collator.sentinel_ids[:3] == (199, 198, 197)
    examples = [{"input_ids": list(range(10, 30))}, {"input_ids": [10, 11, 12]}]
    batch = collator(examples)
    g = gen(3)
    for row, example in enumerate(examples):
        mask = random_spans_noise_mask(len(example["input_ids"]), generator=g)
        inputs, labels = apply_span_corruption(example["input_ids"], mask, collator.sentinel_ids, SEP)
        assert batch["input_ids"][row, : len(inputs)].tolist() == inputs.tolist()
        assert batch["labels"][row, : len(labels)].tolist() == labels.tolist()
        assert (batch["labels"][row, len(labels):] == -100).all()
        assert batch["attention_mask"][row].sum() == len(inputs)
    assert batch["input_ids"][1].tolist() == [10, 11, 199, SEP] + [PAD] * (batch["input_ids"].shape[1] - 4)


def test_token_masking_and_deletion():
    ids = torch.tensor([11, 12, 13, 14])
    assert token_masking(ids, MASK, 0.0, gen()).tolist() == [11, 12, 13, 14]
    assert token_masking(ids, MASK, 1.0, gen()).tolist() == [MASK] * 4
    chosen = torch.rand(4, generator=gen(2)) < 0.5
    assert torch.equal(token_masking(ids, MASK, 0.5, gen(2)), torch.where(chosen, MASK, ids))
    assert token_deletion(ids, 0.0, gen()).tolist() == [11, 12, 13, 14]
    assert token_deletion(ids, 1.0, gen()).tolist() == []
    long_ids = torch.arange(10_000)
    kept = token_deletion(long_ids, 0.3, gen())
    assert abs(len(kept) - 7000) < 150 and bool((kept[1:] > kept[:-1]).all())


def test_sample_infilling_span_lengths_cover_the_budget():
    assert sample_infilling_span_lengths(10, 0.3, 3.0, gen()).sum() == 3  # not ceil(3.0000000000000004)
    assert sample_infilling_span_lengths(10, 0.0, 3.0, gen()).tolist() == []
    for seed in range(20):
        lengths = sample_infilling_span_lengths(97, 0.3, 3.0, gen(seed))
        assert int(lengths.sum()) == math.ceil(97 * 0.3) and bool((lengths >= 0).all()) and lengths[-1] > 0


@pytest.mark.parametrize("poisson_lambda", [3.0, 0.5])
def test_text_infilling_one_mask_per_span(poisson_lambda):
    ids = torch.arange(10, 60)
    saw_insertion = False
    for seed in range(20):
        lengths = sample_infilling_span_lengths(len(ids), 0.3, poisson_lambda, gen(seed))
        out = text_infilling(ids, MASK, 0.3, poisson_lambda, gen(seed))
        assert int((out == MASK).sum()) == len(lengths)
        position, span = 0, 0
        for token in out.tolist():  # walk the original: a mask skips its span, any other token is the next one
            if token == MASK:
                position, span = position + int(lengths[span]), span + 1
            else:
                assert token == int(ids[position])
                position += 1
        assert position == len(ids) and len(out) == len(ids) - 15 + len(lengths)
        saw_insertion |= bool((lengths == 0).any())
    if poisson_lambda < 1:  # P(length 0) = exp(-0.5): empty spans (insertions) must have come up
        assert saw_insertion
    assert text_infilling(ids, MASK, 1.0, 3.0, gen()).unique().tolist() == [MASK]
    assert text_infilling(ids, MASK, 0.0, 3.0, gen()).tolist() == ids.tolist()


def test_sentence_permutation_shuffles_whole_sentences():
    ids = torch.tensor([15, 16, DOT, 17, DOT, DOT, 18, 19])  # ". ." ends one sentence; [18, 19] has no end
    sentences = [[15, 16, DOT], [17, DOT, DOT], [18, 19]]
    allowed = {tuple(sum(order, [])) for order in permutations(sentences)}
    seen = {tuple(sentence_permutation(ids, DOT, gen(seed)).tolist()) for seed in range(100)}
    assert seen == allowed
    assert sentence_permutation(ids, {DOT, 19}, gen()).sort().values.tolist() == ids.sort().values.tolist()
    assert sentence_permutation(torch.tensor([], dtype=torch.long), DOT, gen()).tolist() == []


def test_document_rotation_is_a_rotation():
    ids = torch.tensor([11, 12, 13, 14, 15])
    rotations = {tuple(ids.roll(-k).tolist()) for k in range(5)}
    seen = {tuple(document_rotation(ids, gen(seed)).tolist()) for seed in range(60)}
    assert seen == rotations


def test_bart_collator_wraps_bodies_in_bos_eos():
    quiet = BartDenoisingCollator(CLS, SEP, PAD, MASK, permute_sentences=False, infill_prob=0.0)
    batch = quiet([{"input_ids": [11, 12, DOT]}, {"input_ids": [13]}])
    assert batch["input_ids"].tolist() == [[CLS, 11, 12, DOT, SEP], [CLS, 13, SEP, PAD, PAD]]
    assert batch["labels"].tolist() == [[CLS, 11, 12, DOT, SEP], [CLS, 13, SEP, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # BART-large: sentences permuted, then ceil(0.3 * 6) = 2 tokens infilled
    body = [11, 12, DOT, 13, 14, DOT]
    noisy = BartDenoisingCollator.from_tokenizer(FakeTokenizer(), generator=gen())([{"input_ids": body}])
    g = gen()
    expected = text_infilling(sentence_permutation(torch.tensor(body), DOT, g), MASK, 0.3, 3.0, g)
    assert noisy["input_ids"][0].tolist() == [CLS, *expected.tolist(), SEP]
    assert noisy["labels"][0].tolist() == [CLS, *body, SEP]


def test_prefix_lm_collator_fixed_fraction():
    examples = [{"input_ids": [11, 12, 13, 14, 15, 16]}, {"input_ids": [21, 22, 23, 24]}]
    batch = PrefixLMCollator(PAD, prefix_fraction=0.5)(examples)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["prefix_mask"].tolist() == [[True] * 3 + [False] * 3, [True, True] + [False] * 4]
    assert batch["labels"].tolist() == [[-100, -100, -100, 14, 15, 16], [-100, -100, 23, 24, -100, -100]]
    assert batch["prefix_mask"].dtype == torch.bool


def test_prefix_lm_collator_uniform_prefix():
    collator = PrefixLMCollator(PAD, min_prefix=2, generator=gen(4))
    batch = collator([{"input_ids": list(range(10, 16))}] * 200)
    lengths = batch["prefix_mask"].sum(1)
    g = gen(4)
    assert lengths.tolist() == [int(torch.randint(2, 6, (1,), generator=g)) for _ in range(200)]
    assert set(lengths.tolist()) == {2, 3, 4, 5}
    with pytest.raises(ValueError, match="min_prefix=5 leaves no suffix in an example of 3 tokens"):
        PrefixLMCollator(PAD, min_prefix=5)([{"input_ids": [1, 2, 3]}])


def test_prefix_to_seq2seq():
    encoder_ids, labels = split_for_encoder_decoder([1, 2, 3, 4, 5], 0.5)
    assert (encoder_ids.tolist(), labels.tolist()) == ([1, 2], [3, 4, 5])
    assert [t.tolist() for t in split_for_encoder_decoder([1, 2], 0.1)] == [[1], [2]]
    examples = [{"input_ids": [11, 12, 13, 14, 15, 16]}, {"input_ids": [21, 22]}]
    batch = PrefixToSeq2SeqCollator(PAD, 0.5, eos_token_id=SEP)(examples)
    assert batch["input_ids"].tolist() == [[11, 12, 13], [21, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[14, 15, 16, SEP], [22, SEP, -100, -100]]


@pytest.mark.parametrize("build, message", [
    (lambda: MLMCollator(MASK, PAD, 50, mlm_probability=1.5), "mlm_probability=1.5"),
    (lambda: MLMCollator(MASK, PAD, 50, mlm_probability=0.0), "mlm_probability=0.0"),
    (lambda: MLMCollator(MASK, PAD, 50, mask_replace_prob=0.95), "mask_replace_prob=0.95 + random_replace_prob=0.1"),
    (lambda: MLMCollator(MASK, PAD, 50, random_replace_prob=-0.1), "random_replace_prob=-0.1"),
    (lambda: MLMCollator(None, PAD, 50), "mask_token_id=None"),
    (lambda: MLMCollator(MASK, PAD, 0), "vocab_size=0"),
    (lambda: MLMCollator(MASK, PAD, 50, special_token_ids=(-1,)), "special_token_ids=-1"),
    (lambda: MLMCollator(MASK, PAD, 50, generator=0), "generator=0"),
    (lambda: MLMCollator(MASK, PAD, 50)([]), "examples=[]"),
    (lambda: MLMCollator(MASK, PAD, 50)([{"ids": [1]}]), "'input_ids'"),
    (lambda: MLMCollator(MASK, PAD, 50)([{"input_ids": [1.5]}]), "input_ids=[1.5]"),
    (lambda: mask_tokens(torch.ones(2, 3).long(), torch.ones(2, 2).bool(), MASK, 50), "special_mask (2, 2)"),
    (lambda: NSPCollator(CLS, SEP, PAD, max_length=4), "max_length=4"),
    (lambda: NSPCollator(CLS, SEP, PAD, mlm="bert"), "mlm='bert'"),
    (lambda: NSPCollator(CLS, SEP, PAD)([{"segment_a": [1], "segment_b": [2], "next_sentence_label": 2}]),
     "next_sentence_label=2"),
    (lambda: SOPCollator(CLS, SEP, PAD)([{"segment_a": [1], "segment_b": [], "sentence_order_label": 0}]),
     "segment_b=[]"),
    (lambda: make_nsp_pairs([[[1], [2]]], gen()), "documents has 1 document"),
    (lambda: make_nsp_pairs(DOCUMENTS, gen(), random_prob=2), "random_prob=2"),
    (lambda: make_sop_pairs([[[1]], []], gen()), "documents[1]=[]"),
    (lambda: make_sop_pairs(DOCUMENTS, gen(), swap_prob=-1), "swap_prob=-1"),
    (lambda: replaced_token_detection_labels(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 2)), "shapes"),
    (lambda: random_spans_noise_mask(10, noise_density=1.0), "noise_density=1.0"),
    (lambda: random_spans_noise_mask(10, mean_noise_span_length=0.5), "mean_noise_span_length=0.5"),
    (lambda: random_spans_noise_mask(0), "length=0"),
    (lambda: compute_span_corruption_lengths(1), "inputs_length=1"),
    (lambda: apply_span_corruption([1, 2, 3], [1, 0, 1], (99,), 1), "sentinel_ids has 1 ids for 2"),
    (lambda: apply_span_corruption([1, 2, 3], [1, 0], (99,), 1), "noise_mask (2,)"),
    (lambda: descending_sentinel_ids(5, count=10), "first_sentinel_id=5"),
    (lambda: SpanCorruptionCollator((), SEP, PAD), "sentinel_ids=()"),
    (lambda: SpanCorruptionCollator((99,), SEP, PAD, noise_density=0), "noise_density=0"),
    (lambda: SpanCorruptionCollator.from_tokenizer(NoSentinelsTokenizer()), "num_sentinels=100"),
    (lambda: token_masking([1, 2], MASK, 1.2), "probability=1.2"),
    (lambda: token_deletion([1, 2], -0.5), "probability=-0.5"),
    (lambda: text_infilling([1, 2], MASK, 0.3, poisson_lambda=0), "poisson_lambda=0"),
    (lambda: sentence_permutation([1, 2], ()), "sentence_end_ids=()"),
    (lambda: document_rotation([[1, 2]]), "ids=[[1, 2]]"),
    (lambda: BartDenoisingCollator(CLS, SEP, PAD, MASK), "sentence_end_ids=()"),
    (lambda: BartDenoisingCollator.from_tokenizer(NoSentinelsTokenizer()), "sentence_end_ids: the tokenizer maps"),
    (lambda: BartDenoisingCollator(CLS, SEP, PAD, MASK, (DOT,), infill_prob=3), "infill_prob=3"),
    (lambda: BartDenoisingCollator(CLS, SEP, PAD, MASK, (DOT,), token_delete_prob=-1), "token_delete_prob=-1"),
    (lambda: PrefixLMCollator(PAD, prefix_fraction=1.0), "prefix_fraction=1.0"),
    (lambda: PrefixLMCollator(PAD, min_prefix=0), "min_prefix=0"),
    (lambda: PrefixLMCollator(PAD)([{"input_ids": [7]}]), "input_ids=[7] has 1 tokens"),
    (lambda: PrefixToSeq2SeqCollator(PAD, prefix_fraction=0), "prefix_fraction=0"),
    (lambda: PrefixToSeq2SeqCollator(PAD, eos_token_id=-2), "eos_token_id=-2"),
    (lambda: split_for_encoder_decoder([1, 2, 3], 1.5), "prefix_fraction=1.5"),
])
def test_bad_arguments_raise_value_error(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
