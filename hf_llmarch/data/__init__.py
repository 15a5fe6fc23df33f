"""Offline data utilities: demo corpus, local tokenizers and causal-LM datasets."""

from .corpus import corpus_documents, default_corpus
from .lm_data import LMBlockDataset, load_text, make_lm_datasets
from .mqar import MQARConfig, MQARDataset, make_mqar, mqar_accuracy, mqar_datasets
from .tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer, train_bpe_tokenizer

__all__ = [
    "BYTE_VOCAB_SIZE",
    "LMBlockDataset",
    "MQARConfig",
    "MQARDataset",
    "byte_tokenizer",
    "corpus_documents",
    "default_corpus",
    "load_text",
    "make_lm_datasets",
    "make_mqar",
    "mqar_accuracy",
    "mqar_datasets",
    "train_bpe_tokenizer",
]
