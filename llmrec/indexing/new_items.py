"""Give SIDs to items that arrived after the map was built, without touching existing SIDs.

A new item is encoded by the saved quantizer from its text alone. If its code tuple is free it
takes it; if taken, it moves to the nearest free last-level code under the same prefix (as
LC-Rec's reassignment), or, when the map has a suffix level, takes the smallest free suffix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.config import load_config
from llmrec.data.movielens import cache_dir
from llmrec.indexing.build import IndexConfig
from llmrec.indexing.embed import embed_texts, finish_vectors
from llmrec.indexing.quantizers import Quantizer
from llmrec.indexing.sid_map import SemanticIdError, SemanticIdMap
from llmrec.indexing.store import load_quantizer
from llmrec.indexing.text import item_texts
from llmrec.run import CONFIG, SIDS, RunLayout


def add_items(
    run: str | Path, items: pd.DataFrame, vectors: np.ndarray | None = None
) -> SemanticIdMap:
    """SIDs for new items (``item_id`` + text fields) through the run's own pipeline.

    Texts are rendered with the run's template and embedded with its embedder (or ``vectors``
    are given, for precomputed embeddings), then encoded by its saved quantizer. Returns the
    grown map; the run's files are left as they are.
    """
    layout = RunLayout.of(run)
    folder = layout.stage(SIDS).require(f"llmrec index build --run {layout.root}")
    cfg = load_config(IndexConfig, folder / CONFIG)
    if cfg.method not in ("rq_kmeans", "rq_vae"):
        raise SemanticIdError(f"method {cfg.method!r} does not derive SIDs from item text")
    if vectors is None:
        texts = item_texts(items, cfg.text_template)
        vectors = embed_texts(texts, cfg.embedding, cache_dir() / "embeddings")
    else:
        vectors = finish_vectors(vectors, cfg.embedding)
    sid_map = SemanticIdMap.load(layout.sid_map_file)
    quantizer = load_quantizer(folder / "quantizer.safetensors")
    return assign_new_items(sid_map, quantizer, items["item_id"].astype(str).tolist(), vectors)


def assign_new_items(
    sid_map: SemanticIdMap, quantizer: Quantizer, item_ids: list[str], vectors: np.ndarray
) -> SemanticIdMap:
    """A map extended with ``item_ids`` (embedded as ``vectors``); old items keep their SIDs."""
    known = [i for i in item_ids if i in set(sid_map.item_ids)]
    if known:
        raise SemanticIdError(f"items already have SIDs: {known[:5]}")
    base = quantizer.encode(vectors)
    base_levels = base.shape[1]
    suffix = bool(sid_map.metadata.get("suffix_level")) and sid_map.levels == base_levels + 1
    if sid_map.levels != base_levels + int(suffix):
        raise SemanticIdError(
            f"the quantizer gives {base_levels} levels, the map has {sid_map.levels}"
        )
    taken = {tuple(int(c) for c in row) for row in sid_map.codes}
    # Loops run over the *new* items only (usually a handful), never over the catalog.
    new_codes = []
    for row, vec in zip(base, vectors, strict=True):
        prefix = tuple(int(c) for c in row)
        if suffix:
            code = next(
                (
                    prefix + (s,)
                    for s in range(sid_map.codebook_sizes[-1])
                    if prefix + (s,) not in taken
                ),
                None,
            )
        elif prefix not in taken:
            code = prefix
        else:
            dist = quantizer.last_level_distances(vec[None, :], row[None, :])[0]
            code = next(
                (
                    prefix[:-1] + (int(c),)
                    for c in np.argsort(dist, kind="stable")
                    if prefix[:-1] + (int(c),) not in taken
                ),
                None,
            )
        if code is None:
            raise SemanticIdError(f"no free SID under prefix {prefix}; rebuild the index")
        taken.add(code)
        new_codes.append(code)
    return sid_map.with_items(
        item_ids, np.array(new_codes, dtype=np.int64).reshape(-1, sid_map.levels)
    )
