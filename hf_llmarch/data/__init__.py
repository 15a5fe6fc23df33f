"""Offline data utilities: demo corpus, local tokenizers, causal-LM datasets and pre-training collators."""

from .corpus import corpus_documents, default_corpus
from .denoising import (
    BartDenoisingCollator,
    SpanCorruptionCollator,
    apply_span_corruption,
    compute_span_corruption_lengths,
    descending_sentinel_ids,
    document_rotation,
    random_spans_noise_mask,
    sample_infilling_span_lengths,
    sentence_permutation,
    text_infilling,
    token_deletion,
    token_masking,
)
from .lm_data import LMBlockDataset, load_text, make_lm_datasets
from .masking import (
    MLMCollator,
    NSPCollator,
    SOPCollator,
    make_nsp_pairs,
    make_sop_pairs,
    mask_tokens,
    replaced_token_detection_labels,
)
from .mqar import MQARConfig, MQARDataset, make_mqar, mqar_accuracy, mqar_datasets
from .prefix import PrefixLMCollator, PrefixToSeq2SeqCollator, split_for_encoder_decoder
from .tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer, train_bpe_tokenizer

__all__ = [
    "BYTE_VOCAB_SIZE",
    "BartDenoisingCollator",
    "LMBlockDataset",
    "MLMCollator",
    "MQARConfig",
    "MQARDataset",
    "NSPCollator",
    "PrefixLMCollator",
    "PrefixToSeq2SeqCollator",
    "SOPCollator",
    "SpanCorruptionCollator",
    "apply_span_corruption",
    "byte_tokenizer",
    "compute_span_corruption_lengths",
    "corpus_documents",
    "default_corpus",
    "descending_sentinel_ids",
    "document_rotation",
    "load_text",
    "make_lm_datasets",
    "make_mqar",
    "make_nsp_pairs",
    "make_sop_pairs",
    "mask_tokens",
    "mqar_accuracy",
    "mqar_datasets",
    "random_spans_noise_mask",
    "replaced_token_detection_labels",
    "sample_infilling_span_lengths",
    "sentence_permutation",
    "split_for_encoder_decoder",
    "text_infilling",
    "token_deletion",
    "token_masking",
    "train_bpe_tokenizer",
]
