"""ML-100K: the instruct stage builds, and the SID round trip holds for all 1,682 items with the
tiny local BPE tokenizer and with a SentencePiece tokenizer. Marked slow; CI runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.data import DataConfig, prepare_data
from llmrec.indexing.build import IndexConfig, build_index
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.build import InstructConfig, build_instruct

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ml100k")
    prepare_data(DataConfig(), folder)
    build_index(IndexConfig(), folder)  # MiniLM vectors come from the embedding cache if warm
    build_instruct(InstructConfig(), folder)
    return folder


def test_counts_and_round_trip_with_the_tiny_tokenizer(run: Path) -> None:
    info = json.loads((run / "instruct" / "counts.json").read_text())
    assert info["roundtrip"] == {"items": 1682, "ok": True}
    counts = info["counts"]
    assert counts["validation"] == counts["test"] == {"seqrec": 943}
    # Every prefix of every training sequence: 98,114 training items minus one per user.
    assert counts["train"]["seqrec"] == 98_114 - 943
    assert counts["train"]["item2sid"] == counts["train"]["sid2title"] == 1682


def test_round_trip_with_a_sentencepiece_tokenizer(run: Path) -> None:
    from llmrec.tokens import add_sid_tokens, require_sid_roundtrip, train_tokenizer

    sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
    texts = [json.loads(line)["text"] for line in (run / "sids" / "item_text.jsonl").open()]
    tokenizer = train_tokenizer(texts, vocab_size=2000, kind="sentencepiece")
    add_sid_tokens(tokenizer, sid_map)
    report = require_sid_roundtrip(tokenizer, sid_map)
    assert report.ok and report.n_items == 1682
