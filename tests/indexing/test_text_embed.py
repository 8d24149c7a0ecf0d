"""Item texts (sandboxed templates) and the embedding backends with their cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.indexing import embed as embed_mod
from llmrec.indexing.embed import EmbeddingConfig, embed_texts
from llmrec.indexing.text import item_texts
from llmrec.templating import TemplateError


def test_default_templates_by_columns() -> None:
    movies = pd.DataFrame(
        {"item_id": ["1"], "title": ["Heat"], "year": ["1995"], "genres": [["Action", "Crime"]]}
    )
    assert item_texts(movies) == ["Heat (1995). Genres: Action, Crime"]
    products = pd.DataFrame(
        {
            "item_id": ["p"],
            "title": ["Pen"],
            "brand": [""],
            "categories": [["Office", "Pens"]],
            "description": ["Blue."],
        }
    )
    assert item_texts(products) == ["Pen. Categories: Office > Pens. Blue."]
    plain = pd.DataFrame({"item_id": ["x"], "name": ["Thing"]})
    assert item_texts(plain) == ["name: Thing"]


def test_item_fields_are_data_never_template_code() -> None:
    items = pd.DataFrame({"item_id": ["1"], "title": ["{{ 7*7 }} {% if true %}x{% endif %}"]})
    assert item_texts(items, "{{ title }}") == ["{{ 7*7 }} {% if true %}x{% endif %}"]


def test_template_errors_are_clear() -> None:
    items = pd.DataFrame({"item_id": ["1"], "title": ["a"]})
    with pytest.raises(TemplateError, match="UndefinedError"):
        item_texts(items, "{{ brand }}")
    with pytest.raises(TemplateError, match="item text:1"):
        item_texts(items, "{% if %}")
    with pytest.raises(TemplateError, match="SecurityError"):  # the sandbox holds
        item_texts(items, "{{ title.__class__.__mro__ }}")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with a local WordPiece vocabulary: the `hf` backend without downloads."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["the", "a", "red", "blue", "pen", "paper", "movie", "toy", "story", "action", "comedy"]
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def test_hf_backend_mean_pools_and_ignores_padding(tiny_bert: Path) -> None:
    cfg = EmbeddingConfig(backend="hf", model=str(tiny_bert), batch_size=2, cache=False)
    texts = ["red pen", "a blue toy story movie", "red pen"]
    vectors = embed_texts(texts, cfg)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # The same text padded differently in another batch gives the same vector.
    alone = embed_texts(["red pen"], cfg)
    np.testing.assert_allclose(vectors[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(vectors[2], alone[0], atol=1e-5)


def test_cache_reuses_vectors(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = EmbeddingConfig(backend="hf", model=str(tiny_bert))
    first = embed_texts(["red pen", "blue paper"], cfg, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def fail(*args: object) -> np.ndarray:
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(embed_mod, "_embed_hf", fail)
    np.testing.assert_array_equal(embed_texts(["red pen", "blue paper"], cfg, tmp_path), first)
    with pytest.raises(AssertionError):  # other texts: a new key
        embed_texts(["red pen"], cfg, tmp_path)


def test_npy_backend(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.array([[3.0, 4.0], [1.0, 0.0]]))
    vectors = embed_texts(["a", "b"], EmbeddingConfig(backend="npy", path=str(tmp_path / "v.npy")))
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"expected shape \[3, dim\]"):
        embed_texts(["a", "b", "c"], EmbeddingConfig(backend="npy", path=str(tmp_path / "v.npy")))
