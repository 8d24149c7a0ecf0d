"""A run directory's layout: every stage folder and artifact path named once, and stage keys.

``llmrec <stage> <verb> --run runs/<name>`` reads what earlier stages left in ``runs/<name>/``
and writes its own folder there. Stage code asks a ``RunLayout`` for paths instead of spelling
them, and writes its artifacts under the file names defined here.

A stage's *key* (``stage_key``) hashes its config, the keys of the stages it reads and the
content of the input files it reads: a finished stage whose marker holds the same key is
skipped, and a changed input changes the key of its stage and so of every stage downstream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.config import config_hash, to_dict
from llmrec.errors import UserError
from llmrec.io import FINGERPRINT_CACHE, StageDir, fingerprint_files

logger = logging.getLogger(__name__)

# Stage folders.
DATA, SIDS, INSTRUCT, EVAL, SASREC = "data", "sids", "instruct", "eval", "baselines/sasrec"
# Stages that train a model, in the order a run usually goes through them.
TRAINED = ("sft", "dpo", "grpo", "per_user")

# File names inside stage folders (writers use them under their temporary folder).
SPLIT, ITEMS, EVENTS, STATS = "split.parquet", "items.parquet", "events.parquet", "stats.json"
SID_MAP, ITEM_TEXT = "sid_map.json", "item_text.jsonl"
TOKENIZER, COUNTS = "tokenizer", "counts.json"
MODEL, BASE_MODEL, MODEL_INFO, METRICS = "model", "base_model", "model_info.json", "metrics.json"
EXPORT_INFO, CONFIG = "export_info.json", "config.yaml"
ROUTER = "router.json"


@dataclass(frozen=True)
class RunLayout:
    """Where everything of one run lives."""

    root: Path

    def __post_init__(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run directory", field="--run")

    @classmethod
    def of(cls, run: str | Path | RunLayout) -> RunLayout:
        """A layout for a run directory (or the layout itself)."""
        return run if isinstance(run, RunLayout) else cls(Path(run))

    def stage(self, name: str) -> StageDir:
        """One stage's folder (``data``, ``sids``, ``sft``, ``export/sft``, ...)."""
        return StageDir(self.root, name)

    def key(self, name: str) -> str | None:
        """The key a finished stage was built with, None if it is not finished."""
        return (self.stage(name).done_info() or {}).get("config_hash")

    # ---- artifacts ----------------------------------------------------------------------------

    @property
    def split_file(self) -> Path:
        """The split: one row per user (data stage)."""
        return self.root / DATA / SPLIT

    @property
    def items_file(self) -> Path:
        """Item ids and text fields (data stage)."""
        return self.root / DATA / ITEMS

    @property
    def events_file(self) -> Path:
        """The filtered interactions (data stage)."""
        return self.root / DATA / EVENTS

    @property
    def sid_map_file(self) -> Path:
        """The ``SemanticIdMap`` (index stage)."""
        return self.root / SIDS / SID_MAP

    @property
    def item_text_file(self) -> Path:
        """The item texts that were embedded, one JSON line per item (index stage)."""
        return self.root / SIDS / ITEM_TEXT

    @property
    def instruct_dir(self) -> Path:
        """The instruction ``DatasetDict`` (instruct stage)."""
        return self.root / INSTRUCT

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer with every SID token (instruct stage)."""
        return self.root / INSTRUCT / TOKENIZER

    @property
    def counts_file(self) -> Path:
        """Example counts and the dataset format (instruct stage)."""
        return self.root / INSTRUCT / COUNTS

    def model_dir(self, stage: str) -> Path:
        """A trained stage's model: a transformers checkpoint or a PEFT adapter."""
        return self.root / stage / MODEL

    def model_info_file(self, stage: str) -> Path:
        """How to reload a trained stage's model, and where it came from."""
        return self.root / stage / MODEL_INFO

    def checkpoints(self, stage: str, key: str) -> Path:
        """Checkpoints of a training run with this key (outside the stage folder: kept
        across crashes, removed once the stage is finished)."""
        return self.root / f"{stage}.checkpoints" / key

    def export(self, stage: str) -> StageDir:
        """A trained stage's model merged into one plain HF checkpoint (what vLLM loads)."""
        return StageDir(self.root, f"export/{stage}")

    # ---- keys ---------------------------------------------------------------------------------

    def stage_key(
        self, config: Any, upstream: Sequence[str] = (), files: Sequence[Path] = ()
    ) -> str:
        """The key of a stage with this config that reads the ``upstream`` stages and ``files``.

        Each upstream stage must be finished (its key enters this one); each file enters by its
        content hash.
        """
        keys = {}
        for name in upstream:
            key = self.key(name)
            if key is None:
                raise UserError(f"{self.root / name} is missing or incomplete")
            keys[name] = key
        prints = fingerprint_files(list(files), self.root / FINGERPRINT_CACHE) if files else {}
        plain = to_dict(config) if not isinstance(config, Mapping) else dict(config)
        return config_hash({"config": plain, "upstream": keys, "files": sorted(prints.values())})

    def newest_trained(self) -> str | None:
        """The training stage finished last (what ``llm`` means in evaluation), or None."""
        done = [(self.stage(s).marker.stat().st_mtime, s) for s in TRAINED if self.key(s)]
        return max(done)[1] if done else None

    def read_model_info(self, stage: str) -> dict[str, Any]:
        """A finished trained stage's ``model_info.json``."""
        self.stage(stage).require(f"llmrec train {stage.replace('_', '-')} --run {self.root}")
        return dict(json.loads(self.model_info_file(stage).read_text(encoding="utf-8")))
