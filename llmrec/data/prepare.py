"""The data stage: load a dataset by name, filter, split, and write ``<run>/data/``.

``<run>/data/`` holds ``items.parquet`` (``item_id`` + text fields), ``events.parquet`` (the
filtered interactions), ``split.parquet`` (one row per user), ``stats.json``, the resolved
``config.yaml`` and, written last, the ``_DONE.json`` marker with the config hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from llmrec.config import dump_yaml
from llmrec.data.amazon import load_amazon
from llmrec.data.atomic import load_atomic
from llmrec.data.filters import FilterConfig, apply_filters
from llmrec.data.movielens import load_ml1m, load_ml100k_grouplens, load_ml100k_recbole
from llmrec.data.schema import DataError, EncodingErrors, Interactions, Source
from llmrec.data.split import Split, SplitConfig, make_split
from llmrec.data.stats import dataset_stats, format_stats
from llmrec.io import write_json_atomic, write_parquet
from llmrec.run import CONFIG, DATA, EVENTS, ITEMS, SPLIT, STATS, RunLayout

logger = logging.getLogger(__name__)

DATASETS = ("ml-100k", "ml-1m", "amazon-2023", "amazon-2018", "atomic", "tabular")


@dataclass
class DatasetConfig:
    """Which dataset to read, and how."""

    name: str = field(
        default="ml-100k",
        metadata={"help": "one of " + ", ".join(DATASETS) + " (ml-100k works offline)"},
    )
    path: str | None = field(
        default=None,
        metadata={
            "help": "ml-100k/ml-1m: GroupLens folder (ml-100k: default, the RecBole "
            "wheel); amazon-*: review file; atomic: .inter file; tabular: CSV/TSV/Parquet"
        },
    )
    item_path: str | None = field(
        default=None,
        metadata={
            "help": "amazon-*: meta_*.jsonl(.gz); atomic: .item file (default: beside "
            ".inter); tabular: item table"
        },
    )
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "atomic/tabular: our field (user_id, item_id, timestamp, rating, "
            "review) → the file's column"
        },
    )
    item_columns: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "atomic/tabular: our item field (title, ...) → the file's column"},
    )
    list_fields: list[str] = field(
        default_factory=list,
        metadata={"help": "tabular: item columns holding '|'-separated lists (e.g. genres)"},
    )
    timestamp_format: str = field(
        default="numeric",
        metadata={"help": "tabular: numeric, datetime (ISO 8601), mixed, or a strftime format"},
    )
    with_reviews: bool = field(
        default=False, metadata={"help": "amazon-*: keep review text (for preference tasks)"}
    )
    unknown_items: Literal["error", "drop"] = field(
        default="error",
        metadata={"help": "events naming items absent from the item file: error or drop"},
    )
    encoding_errors: EncodingErrors = field(
        default="strict",
        metadata={
            "help": "invalid UTF-8 in text files: strict (fail naming the line) or replace "
            "(read it as U+FFFD; stats.json counts the lines)"
        },
    )


@dataclass
class DataConfig:
    """The data stage: dataset, filters, split."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


def load_dataset(cfg: DatasetConfig) -> Interactions:
    """Read a dataset by name into ``Interactions``."""
    name = cfg.name
    errors = cfg.encoding_errors
    if name == "ml-100k":
        if cfg.path:
            return load_ml100k_grouplens(cfg.path, cfg.unknown_items, errors)
        return load_ml100k_recbole(cfg.unknown_items)
    if cfg.path is None:
        raise DataError(f"is required for dataset {name!r}", field="dataset.path")
    if name == "ml-1m":
        return load_ml1m(cfg.path, cfg.unknown_items, errors)
    if name in ("amazon-2023", "amazon-2018"):
        return load_amazon(
            cfg.path,
            cfg.item_path,
            release=name.split("-")[1],
            with_reviews=cfg.with_reviews,
            unknown_items=cfg.unknown_items,
            encoding_errors=errors,
        )
    if name == "atomic":
        inter = Path(cfg.path)
        item_path = Path(cfg.item_path) if cfg.item_path else inter.with_suffix(".item")
        item = (
            Source.from_path(item_path, errors) if (cfg.item_path or item_path.exists()) else None
        )
        return load_atomic(
            Source.from_path(inter, errors),
            item,
            name=inter.stem,
            columns=cfg.columns,
            item_columns=cfg.item_columns,
            unknown_items=cfg.unknown_items,
        )
    if name == "tabular":
        from llmrec.data.tabular import load_tabular

        return load_tabular(
            cfg.path,
            columns=cfg.columns,
            item_path=cfg.item_path,
            item_columns=cfg.item_columns,
            list_fields=tuple(cfg.list_fields),
            timestamp_format=cfg.timestamp_format,
            unknown_items=cfg.unknown_items,
            encoding_errors=errors,
        )
    raise DataError(
        f"names unknown dataset {name!r}; known: {', '.join(DATASETS)}", field="dataset.name"
    )


def dataset_inputs(cfg: DatasetConfig) -> list[Path]:
    """The files a dataset is read from (their content enters the data stage's key)."""
    paths = [Path(p) for p in (cfg.path, cfg.item_path) if p]
    if cfg.name == "atomic" and cfg.path and not cfg.item_path:
        beside = Path(cfg.path).with_suffix(".item")
        paths += [beside] if beside.exists() else []
    # The default ML-100K comes from a wheel pinned by name and SHA-256: nothing to hash.
    return [p for p in paths if p.exists()]


@dataclass(frozen=True)
class PreparedData:
    """What the data stage leaves in ``<run>/data/``, loaded."""

    path: Path
    split: Split
    items: pd.DataFrame
    stats: dict

    @classmethod
    def load(cls, run: str | Path) -> PreparedData:
        """Open a finished data stage."""
        import json

        layout = RunLayout.of(run)
        folder = layout.stage(DATA).require(f"llmrec data prepare --run {layout.root}")
        stats = json.loads((folder / STATS).read_text())
        items = pd.read_parquet(layout.items_file)
        return cls(folder, Split.load(layout.split_file), items, stats)


def build_data(
    data: Interactions, cfg: DataConfig
) -> tuple[pd.DataFrame, pd.DataFrame, Split, dict]:
    """Filter and split loaded data; returns events, items, split and stats (pure)."""
    events, reports = apply_filters(data.events, cfg.filters)
    split = make_split(events, cfg.split)
    items = data.items[data.items["item_id"].isin(pd.unique(events["item_id"]))]
    stats = dataset_stats(data.name, events, split, reports, raw_interactions=len(data.events))
    if cfg.dataset.encoding_errors == "replace":
        stats["replaced_lines"] = data.replaced_lines
    return events, items.reset_index(drop=True), split, stats


def prepare_data(cfg: DataConfig, run: str | Path, force: bool = False) -> PreparedData:
    """Run the data stage into ``<run>/data/`` (skipped when done with the same config)."""
    layout = RunLayout.of(run)
    stage = layout.stage(DATA)

    def fill(tmp: Path) -> dict:
        data = load_dataset(cfg.dataset)
        events, items, split, stats = build_data(data, cfg)
        write_parquet(tmp / ITEMS, items)
        write_parquet(tmp / EVENTS, events)
        split.save(tmp / SPLIT)
        write_json_atomic(tmp / STATS, stats)
        (tmp / CONFIG).write_text(dump_yaml(cfg), encoding="utf-8")
        return {"sources": list(data.sources)}

    stage.build(layout.stage_key(cfg, files=dataset_inputs(cfg.dataset)), fill, force=force)
    prepared = PreparedData.load(run)
    logger.debug("data stage ready at %s", prepared.path)
    return prepared


def summary(prepared: PreparedData) -> str:
    """The readable statistics of a prepared run."""
    return format_stats(prepared.stats)
