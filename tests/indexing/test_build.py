"""The indexing stage end to end on a synthetic prepared run (precomputed vectors, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.cli import main
from llmrec.config import load_config
from llmrec.data import DataConfig, PreparedData, prepare_data
from llmrec.indexing.build import IndexConfig, build_index, build_sid_map
from llmrec.indexing.new_items import add_items, assign_new_items
from llmrec.indexing.sid_map import SemanticIdError, SemanticIdMap
from llmrec.indexing.store import load_quantizer

N_ITEMS, N_BLOBS, DIM = 240, 6, 16


def n_items(run: Path) -> int:
    """Items that users interacted with: the catalog SIDs are built for."""
    return len(PreparedData.load(run / "run").items)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared run with 240 items in 6 topics, users who stay within a topic."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(1)
    rows = []
    for user in range(120):
        topic = user % N_BLOBS
        items = rng.choice(np.arange(topic, N_ITEMS, N_BLOBS), size=8, replace=False)
        rows += [(f"u{user}", f"i{item}", t) for t, item in enumerate(items)]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    pd.DataFrame(
        {
            "item": [f"i{i}" for i in range(N_ITEMS)],
            "title": [f"thing {i} of topic {i % N_BLOBS}" for i in range(N_ITEMS)],
        }
    ).to_csv(folder / "items.csv", index=False)
    cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={folder / 'log.csv'}",
            f"dataset.item_path={folder / 'items.csv'}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
            "dataset.item_columns={item_id: item}",
        ],
    )
    prepared = prepare_data(cfg, folder / "run")
    # Vectors in items.parquet order, clustered by topic.
    topic = prepared.items["item_id"].str[1:].astype(int).to_numpy() % N_BLOBS
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(N_BLOBS, DIM)) * 4
    vectors = (centers[topic] + rng.normal(size=(len(topic), DIM))).astype(np.float32)
    np.save(folder / "vectors.npy", vectors)
    return folder


def overrides(run: Path, *extra: str) -> list[str]:
    return [
        "embedding.backend=npy",
        f"embedding.path={run / 'vectors.npy'}",
        "quantizer.codebook_size=8",
        "quantizer.epochs=30",
        *extra,
    ]


@pytest.mark.parametrize("method", ["rq_kmeans", "rq_vae", "collaborative", "sequential", "random"])
def test_every_method_gives_unique_sids(run: Path, method: str) -> None:
    cfg = load_config(IndexConfig, None, overrides(run, f"method={method}"))
    result = build_sid_map(PreparedData.load(run / "run"), cfg)
    assert result.diagnostics["collisions_after"] == 0
    assert len(set(result.sid_map.all_sids())) == n_items(run)
    assert result.sid_map.metadata["method"] == method


def test_cli_build_is_deterministic_and_skips_when_done(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run / "run"
    args = ["index", "build", "--run", str(out), *overrides(run)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "collisions:" in printed and "perplexity" in printed and "semantics:" in printed
    diag = json.loads((out / "sids" / "diagnostics.json").read_text())
    assert {"n_items", "collisions_before", "collisions_after"} <= set(diag)
    assert diag["n_items"] == n_items(run) and diag["collisions_after"] == 0
    first = {p.name: p.read_bytes() for p in (out / "sids").iterdir()}
    assert main(args) == 0  # same config: skipped, nothing rewritten
    assert main([*args, "--force"]) == 0  # rebuilt from scratch: the same bytes
    again = {p.name: p.read_bytes() for p in (out / "sids").iterdir()}
    assert first == again
    # Codes carry the topics: items sharing a first-level code are more similar.
    sim = diag["prefix_similarity"]
    assert sim["same_prefix_mean_cos"] > sim["random_mean_cos"] + 0.2


def test_identical_items_still_get_distinct_sids(run: Path, tmp_path: Path) -> None:
    vectors = np.load(run / "vectors.npy")
    vectors[:100] = vectors[0]  # 100 items with the very same text
    np.save(tmp_path / "dup.npy", vectors)
    for method in ("suffix", "reassign+suffix"):
        cfg = load_config(
            IndexConfig,
            None,
            [*overrides(run), f"embedding.path={tmp_path}/dup.npy", f"collisions={method}"],
        )
        result = build_sid_map(PreparedData.load(run / "run"), cfg)
        report = result.diagnostics["collision_report"]
        assert report["collisions_before"] >= 99 and report["collisions_after"] == 0
        assert len(set(result.sid_map.all_sids())) == n_items(run)


def test_new_items_get_free_sids_without_moving_old_ones(run: Path) -> None:
    out = run / "run"
    build_index(load_config(IndexConfig, None, overrides(run)), out)
    sid_map = SemanticIdMap.load(out / "sids" / "sid_map.json")
    old = np.load(run / "vectors.npy")
    # Two new items: an exact twin of an existing one (its code is taken) and a fresh one.
    new_items = pd.DataFrame({"item_id": ["new1", "new2"], "title": ["twin", "fresh"]})
    grown = add_items(out, new_items, np.stack([old[0], old[5] + 0.5]))
    assert [grown.sid(i) for i in sid_map.item_ids] == sid_map.all_sids()
    assert len(set(grown.all_sids())) == n_items(run) + 2
    # The twin lands beside its twin: same text, same prefix, another free code.
    assert grown.codes_of("new1")[:2] == sid_map.codes_of(sid_map.item_ids[0])[:2]
    assert grown.sid("new1") != sid_map.sid(sid_map.item_ids[0])


def test_assign_new_items_with_the_saved_quantizer(run: Path) -> None:
    quantizer = load_quantizer(run / "run" / "sids" / "quantizer.safetensors")
    sid_map = SemanticIdMap.load(run / "run" / "sids" / "sid_map.json")
    vectors = np.random.default_rng(0).normal(size=(1, DIM)).astype(np.float32)
    grown = assign_new_items(sid_map, quantizer, ["late"], vectors)
    assert grown.item_of_sid(grown.sid("late")) == "late"
    with pytest.raises(SemanticIdError, match="already have SIDs"):
        assign_new_items(sid_map, quantizer, [sid_map.item_ids[0]], vectors)
