"""ML-100K with the real all-MiniLM-L6-v2 (offline, from its PyPI package): the issue's
acceptance run. Marked slow (~30 s); CI runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.data import DataConfig, prepare_data
from llmrec.indexing.build import IndexConfig, build_index
from llmrec.indexing.new_items import add_items
from llmrec.indexing.sid_map import SemanticIdMap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ml100k")
    prepare_data(DataConfig(), folder)
    build_index(IndexConfig(), folder)
    return folder


def test_zero_collisions_and_meaningful_prefixes(run: Path) -> None:
    diag = json.loads((run / "sids" / "diagnostics.json").read_text())
    assert diag["n_items"] == 1682 and diag["collisions_after"] == 0
    assert diag["codebook_sizes"][:3] == [32, 32, 32]
    sim = diag["prefix_similarity"]
    assert sim["same_prefix_mean_cos"] > sim["random_mean_cos"] + 0.05
    sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
    assert len(set(sid_map.all_sids())) == 1682
    assert sid_map.metadata["embedding_model"] == "sentence-transformers:all-MiniLM-L6-v2"


def test_rebuild_writes_identical_bytes(run: Path) -> None:
    before = {p.name: p.read_bytes() for p in (run / "sids").iterdir()}
    build_index(IndexConfig(embedding=IndexConfig().embedding), run, force=True)
    after = {p.name: p.read_bytes() for p in (run / "sids").iterdir()}
    assert before == after


def test_embedding_without_cache_is_deterministic(run: Path) -> None:
    from llmrec.indexing.embed import EmbeddingConfig, embed_texts

    texts = [json.loads(line)["text"] for line in (run / "sids" / "item_text.jsonl").open()][:50]
    a = embed_texts(texts, EmbeddingConfig(cache=False))
    b = embed_texts(texts[::-1], EmbeddingConfig(cache=False))[::-1]
    assert a.shape == (50, 384)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_new_movie_gets_a_sid_from_its_text(run: Path) -> None:
    old = SemanticIdMap.load(run / "sids" / "sid_map.json")
    new = pd.DataFrame(
        {
            "item_id": ["new-1"],
            "title": ["Toy Story 5"],
            "year": ["2026"],
            "genres": [["Animation", "Children's", "Comedy"]],
        }
    )
    grown = add_items(run, new)
    assert [grown.sid(i) for i in old.item_ids] == old.all_sids()
    assert grown.item_of_sid(grown.sid("new-1")) == "new-1"
    # A sequel's SID starts like the original's: same first-level code.
    assert grown.codes_of("new-1")[0] == old.codes_of("1")[0]
