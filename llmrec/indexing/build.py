"""The indexing stage: items → text → embeddings → codes → collision-free ``SemanticIdMap``.

``llmrec index build --run runs/ml100k`` reads ``<run>/data/items.parquet`` and writes
``<run>/sids/``: ``sid_map.json`` (the artifact), ``diagnostics.json``, ``quantizer.safetensors``
(what encoding a new item needs), ``item_text.jsonl`` (the texts that were embedded),
``config.yaml`` and the stage marker. Nothing in those files depends on the clock, so a rerun
with the same seed writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrec.config import config_hash, dump_yaml
from llmrec.data.movielens import cache_dir
from llmrec.data.prepare import PreparedData
from llmrec.indexing.collisions import resolve_collisions
from llmrec.indexing.diagnostics import (
    code_diagnostics,
    format_diagnostics_table,
    prefix_similarity,
)
from llmrec.indexing.embed import EmbeddingConfig, embed_texts
from llmrec.indexing.id_schemes import cooccurrence_embedding, random_codes, sequential_codes
from llmrec.indexing.quantizers import (
    Quantizer,
    QuantizerConfig,
    build_quantizer,
    default_codebook_size,
    make_distance_fn,
)
from llmrec.indexing.sid_map import DEFAULT_PREFIXES, DEFAULT_TOKEN_FORMAT, SemanticIdMap
from llmrec.indexing.store import save_quantizer
from llmrec.indexing.text import item_texts
from llmrec.io import write_json_atomic
from llmrec.run import CONFIG, DATA, ITEM_TEXT, SID_MAP, SIDS, RunLayout

logger = logging.getLogger(__name__)

IndexMethod = Literal["rq_kmeans", "rq_vae", "collaborative", "sequential", "random"]


@dataclass
class IndexConfig:
    """How items get their semantic IDs."""

    method: IndexMethod = field(
        default="rq_kmeans",
        metadata={
            "help": "rq_kmeans | rq_vae (on text embeddings) | collaborative (RQ-KMeans "
            "on a co-occurrence spectral embedding) | sequential | random"
        },
    )
    text_template: str | None = field(
        default=None,
        metadata={
            "help": "Jinja template over item fields, or movies/products (default: "
            "chosen from the item columns)"
        },
    )
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(codebook_size=None, progress=True)
    )
    collisions: Literal["suffix", "reassign", "reassign+suffix"] = field(
        default="reassign+suffix",
        metadata={
            "help": "suffix (extra level, TIGER) | reassign (next-nearest free code, "
            "LC-Rec) | reassign+suffix (reassign, then suffix what is left)"
        },
    )
    cooccurrence_window: int = field(
        default=3, metadata={"help": "collaborative: items this close in a history co-occur"}
    )
    cooccurrence_dim: int = field(
        default=64, metadata={"help": "collaborative: spectral embedding dimension"}
    )
    prefixes: list[str] = field(
        default_factory=lambda: list(DEFAULT_PREFIXES),
        metadata={"help": "token prefix letter per level"},
    )
    token_format: str = field(
        default=DEFAULT_TOKEN_FORMAT, metadata={"help": "how a code is written as a token"}
    )


@dataclass(frozen=True)
class IndexResult:
    """What the stage computed, before it is written."""

    sid_map: SemanticIdMap
    diagnostics: dict[str, Any]
    texts: list[str]
    quantizer: Quantizer | None


def _codebook_size(cfg: IndexConfig, n_items: int) -> int:
    q = cfg.quantizer
    return q.codebook_size or default_codebook_size(n_items, q.levels)


def build_sid_map(prepared: PreparedData, cfg: IndexConfig) -> IndexResult:
    """Compute every item's SID with diagnostics (pure: writes nothing but the embedding cache)."""
    items = prepared.items
    item_ids = items["item_id"].astype(str).tolist()
    n = len(item_ids)
    texts = item_texts(items, cfg.text_template)
    size = _codebook_size(cfg, n)
    levels = cfg.quantizer.levels
    vectors: np.ndarray | None = None
    quantizer: Quantizer | None = None
    embedding_model = None
    train_sequences = [list(seq) for seq in prepared.split.table["train_items"]]

    if cfg.method in ("rq_kmeans", "rq_vae"):
        vectors = embed_texts(texts, cfg.embedding, cache_dir() / "embeddings")
        embedding_model = f"{cfg.embedding.backend}:{cfg.embedding.model}"
    elif cfg.method == "collaborative":
        vectors = cooccurrence_embedding(
            item_ids,
            train_sequences,
            cfg.cooccurrence_dim,
            cfg.cooccurrence_window,
            cfg.quantizer.seed,
        )
        embedding_model = f"cooccurrence-spectral:{cfg.cooccurrence_dim}"

    if vectors is not None:
        qcfg = dataclasses.replace(
            cfg.quantizer,
            codebook_size=size,
            method="rq_vae" if cfg.method == "rq_vae" else "rq_kmeans",
        )
        quantizer = build_quantizer(qcfg.method, qcfg)
        raw = quantizer.fit_encode(vectors)
        distance_fn = make_distance_fn(quantizer, vectors, raw)
    elif cfg.method == "sequential":
        raw, distance_fn = sequential_codes(item_ids, train_sequences, levels, size), None
    else:
        raw, distance_fn = random_codes(n, levels, size, cfg.quantizer.seed), None

    method = cfg.collisions if distance_fn is not None else "suffix"
    codes, report = resolve_collisions(
        raw, method=method, distance_fn=distance_fn, codebook_size=size
    )
    sizes = [size] * levels
    if codes.shape[1] > levels:
        # The suffix level gets at least a full codebook, so new items can be told apart later
        # without growing the vocabulary.
        sizes.append(max(size, int(codes[:, -1].max()) + 1))
    diagnostics = {
        "n_items": n,
        "method": cfg.method,
        "levels": codes.shape[1],
        "codebook_sizes": sizes,
        "collisions_before": report.collisions_before,
        "collisions_after": report.collisions_after,
        "collision_report": report.to_dict(),
        "codes": code_diagnostics(codes, sizes),
    }
    if vectors is not None:
        diagnostics["prefix_similarity"] = prefix_similarity(
            vectors, codes, depth=1, seed=cfg.quantizer.seed
        )
    metadata = {
        "method": cfg.method,
        "levels": levels,
        "codebook_size": size,
        "suffix_level": codes.shape[1] > levels,
        "seed": cfg.quantizer.seed,
        "embedding_model": embedding_model,
        "text_template": cfg.text_template,
        "collisions": method,
        "config_hash": config_hash(cfg),
        "data_stats": {k: prepared.stats[k] for k in ("dataset", "users", "items", "interactions")},
    }
    sid_map = SemanticIdMap(
        tuple(item_ids), codes, tuple(sizes), tuple(cfg.prefixes), cfg.token_format, metadata
    )
    return IndexResult(sid_map, diagnostics, texts, quantizer)


def format_report(diagnostics: dict[str, Any]) -> str:
    """The printed summary: codebook table, collisions, and prefix semantics."""
    lines = [format_diagnostics_table(diagnostics["codes"])]
    c = diagnostics["collision_report"]
    lines.append(
        f"collisions: {c['collisions_before']:,} items before resolution "
        f"({c['collision_rate_before']:.2%}), {c['collisions_after']} after "
        f"[{c['method']}: {c['reassigned']} reassigned, suffix level size {c['suffix_size']}]"
    )
    sim = diagnostics.get("prefix_similarity")
    if sim:
        lines.append(
            f"semantics: items sharing a first-level code have mean cosine "
            f"{sim['same_prefix_mean_cos']:.3f} vs {sim['random_mean_cos']:.3f} for random "
            f"pairs (lift {sim['lift']:+.3f})"
        )
    return "\n".join(lines)


def build_index(cfg: IndexConfig, run: str | Path, force: bool = False) -> Path:
    """Run the indexing stage into ``<run>/sids/`` (skipped when done with the same config)."""
    layout = RunLayout.of(run)
    prepared = PreparedData.load(layout.root)
    stage = layout.stage(SIDS)
    # The data stage's key is part of ours: new data means new SIDs.
    key = layout.stage_key(cfg, upstream=[DATA])

    def fill(tmp: Path) -> dict[str, Any]:
        result = build_sid_map(prepared, cfg)
        result.sid_map.save(tmp / SID_MAP)
        write_json_atomic(tmp / "diagnostics.json", result.diagnostics)
        if result.quantizer is not None:
            save_quantizer(tmp / "quantizer.safetensors", result.quantizer)
        with open(tmp / ITEM_TEXT, "w", encoding="utf-8") as fh:
            for item, text in zip(result.sid_map.item_ids, result.texts, strict=True):
                fh.write(json.dumps({"item_id": item, "text": text}, ensure_ascii=False) + "\n")
        (tmp / CONFIG).write_text(dump_yaml(cfg), encoding="utf-8")
        return {"content_hash": result.sid_map.content_hash}

    stage.build(key, fill, force=force)
    return stage.path
