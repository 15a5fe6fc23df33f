import importlib

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from hf_llmarch.data import (
    BYTE_VOCAB_SIZE,
    LMBlockDataset,
    byte_tokenizer,
    corpus_documents,
    default_corpus,
    load_text,
    make_lm_datasets,
    train_bpe_tokenizer,
)
from hf_llmarch.data.corpus import _cache_path

ROUND_TRIP_TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog. 0123456789",
    "héllo — 世界 🙂 Ünïcödé ß ∑ 𝔘 \u200b",
    "def f(x):\n\tif x > 0:\r\n        return {'a': [1, 2]}  # comment\n\n\n  ",
]


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    # Isolate the corpus cache from the user's ~/.cache for the whole module.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_LLMARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield _cache_path()


@pytest.fixture(scope="module")
def corpus(corpus_cache):
    return default_corpus()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_corpus_is_deterministic_and_cached(corpus, corpus_cache):
    assert corpus_cache.read_text(encoding="utf-8") == corpus
    corpus_cache.unlink()
    regenerated = default_corpus()
    assert regenerated == corpus
    assert corpus_cache.exists()
    assert default_corpus() == corpus


def test_corpus_size_and_content(corpus):
    assert len(corpus) > 200_000
    assert "\0" not in corpus
    assert "Return" in corpus
    docs = corpus_documents()
    assert "\n\n".join(docs) == corpus
    assert len(docs) == len(set(docs)) > 500
    assert all(doc.strip() == doc and len(doc) >= 80 for doc in docs)


def test_corpus_max_chars_cuts_at_document_boundary(corpus):
    short = default_corpus(10_000)
    assert 0 < len(short) <= 10_000
    assert corpus.startswith(short + "\n\n")
    assert corpus_documents(10_000) == corpus_documents()[: len(corpus_documents(10_000))]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=["ascii", "unicode", "code"])
def test_byte_tokenizer_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text


def test_byte_tokenizer_special_tokens(tok):
    assert len(tok) == BYTE_VOCAB_SIZE == 258
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.bos_token_id == 256
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 257
    assert tok("a")["input_ids"] == [97]  # no bos/eos added implicitly


def test_byte_tokenizer_left_padding(tok):
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"] == [[257, 257, 97], [97, 98, 99]]
    assert batch["attention_mask"] == [[0, 0, 1], [1, 1, 1]]
    right = byte_tokenizer(padding_side="right")(["a", "abc"], padding=True)
    assert right["input_ids"][0] == [97, 257, 257]


def test_byte_tokenizer_save_and_reload(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ROUND_TRIP_TEXTS:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
        assert reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True) == text
    assert len(reloaded) == BYTE_VOCAB_SIZE
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (256, 257)
    assert reloaded.padding_side == "left"


def test_train_bpe_tokenizer(corpus):
    docs = corpus_documents(100_000)
    bpe = train_bpe_tokenizer(docs, vocab_size=600)
    assert BYTE_VOCAB_SIZE < len(bpe) <= 600
    assert bpe.eos_token == "<|endoftext|>" and bpe.pad_token == "<|pad|>"
    assert bpe.eos_token_id != bpe.pad_token_id
    for text in ROUND_TRIP_TEXTS:
        assert bpe.decode(bpe(text)["input_ids"], skip_special_tokens=True) == text
    sample = docs[0]
    assert len(bpe(sample)["input_ids"]) < len(sample.encode("utf-8"))
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(docs, vocab_size=100)


def test_load_text_default_file_and_directory(corpus, tmp_path):
    assert load_text() == corpus
    assert load_text("default", max_chars=1000) == default_corpus(1000)
    path = tmp_path / "notes.md"
    path.write_text("héllo\n\nworld", encoding="utf-8")
    assert load_text(str(path)) == "héllo\n\nworld"
    assert load_text(str(path), max_chars=3) == "hél"
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second", encoding="utf-8")
    (folder / "a.txt").write_text("first", encoding="utf-8")
    (folder / "skip.md").write_text("not a txt", encoding="utf-8")
    assert load_text(str(folder)) == "first\n\nsecond"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_text(str(tmp_path / "empty"))


def test_load_text_bad_dataset_name_raises(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The libraries read these at import time, so patch the loaded values too.
    for module in ("huggingface_hub.constants", "datasets.config"):
        try:
            monkeypatch.setattr(importlib.import_module(module), "HF_HUB_OFFLINE", True)
        except ImportError:  # without `datasets`, load_text must still raise ValueError
            pass
    name = "no-such-user/no-such-dataset-xyz"
    with pytest.raises(ValueError, match="no-such-dataset-xyz") as err:
        load_text(name)
    assert "local text file" in str(err.value)


def test_make_lm_datasets_shapes_and_split(tok):
    text = "\n\n".join(f"document number {i}: " + "abc " * (i % 7 + 3) for i in range(400))
    train_ds, eval_ds = make_lm_datasets(text, tok, block_size=32, eval_fraction=0.1)
    n_tokens = len(text.replace("\n\n", "")) + 400  # one eos per document
    assert len(train_ds) + len(eval_ds) == n_tokens // 32
    assert len(eval_ds) == round(n_tokens // 32 * 0.1)
    item = train_ds[0]
    assert set(item) == {"input_ids", "labels", "attention_mask"}
    assert item["input_ids"].shape == (32,) and item["input_ids"].dtype == torch.long
    assert torch.equal(item["labels"], item["input_ids"])
    assert torch.equal(item["attention_mask"], torch.ones(32, dtype=torch.long))
    assert tok.eos_token_id in torch.cat([train_ds[i]["input_ids"] for i in range(5)])
    item["labels"][0] = -100  # a collator masking labels must not alter the data
    assert train_ds[0]["labels"][0] != -100
    again_train, again_eval = make_lm_datasets(text, tok, block_size=32, eval_fraction=0.1)
    assert torch.equal(again_train.blocks, train_ds.blocks)
    assert torch.equal(again_eval.blocks, eval_ds.blocks)
    batch = next(iter(DataLoader(train_ds, batch_size=4)))
    assert batch["input_ids"].shape == (4, 32)


def test_make_lm_datasets_max_tokens_and_too_short(tok):
    text = "x" * 1000
    train_ds, eval_ds = make_lm_datasets(text, tok, block_size=10, max_tokens=200)
    assert len(train_ds) + len(eval_ds) == 20 and len(eval_ds) == 1
    with pytest.raises(ValueError, match="block_size=128"):
        make_lm_datasets("too short", tok, block_size=128)


def test_lm_block_dataset_drops_partial_block():
    ds = LMBlockDataset(list(range(25)), block_size=8)
    assert len(ds) == 3
    assert ds[2]["input_ids"].tolist() == list(range(16, 24))
