"""The instruct stage: a split + a SID map → HF ``DatasetDict`` of instruction examples.

``llmrec instruct build --run runs/ml100k`` writes ``<run>/instruct/``: the ``DatasetDict``
(``train``, ``validation``, ``test``; ``datasets.load_from_disk`` opens the folder), the
tokenizer with every SID token added (``tokenizer/``), ``counts.json``, ``config.yaml`` and the
marker. Rows hold ``prompt`` and ``completion`` — strings, or chat messages when the tokenizer
has a chat template — which TRL's ``SFTTrainer`` takes as they are, plus ``task``, ``user_id``,
``history`` and ``target_item`` for evaluation.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.config import ConfigError, dump_yaml
from llmrec.data.prepare import PreparedData
from llmrec.data.schema import DataError
from llmrec.errors import UserError
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.prompt import PromptFormat
from llmrec.instruct.tasks import (
    Catalog,
    Example,
    held_out_cases,
    render_item_task,
    render_review_task,
    render_sequence_task,
    sid_token_pattern,
    training_reviews,
    training_windows,
)
from llmrec.instruct.templates import load_templates
from llmrec.io import write_json_atomic
from llmrec.run import CONFIG, COUNTS, DATA, EVENTS, INSTRUCT, SIDS, TOKENIZER, RunLayout
from llmrec.templating import inert_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class InstructConfig:
    """Which tasks, how much of each, and in which format."""

    tasks: dict[str, float] = field(
        default_factory=lambda: {
            "seqrec": 1.0,
            "title_seqrec": 0.5,
            "item2sid": 1.0,
            "sid2title": 1.0,
            "review2item": 1.0,
        },
        metadata={
            "help": "training mixture: task → weight (0 drops it, 0.5 renders half of "
            "its examples, 2 renders them twice with other paraphrases)",
            "min": 0,
            "min_items": 1,
        },
    )
    eval_tasks: list[str] = field(
        default_factory=lambda: ["seqrec"],
        metadata={
            "help": "tasks rendered for validation/test (first paraphrase, fixed)",
            "min_items": 1,
        },
    )
    max_history: int = field(
        default=20, metadata={"help": "items of history in a prompt", "min": 1}
    )
    min_history: int = field(default=1, metadata={"help": "shortest training history", "min": 1})
    templates_dir: str | None = field(
        default=None, metadata={"help": "folder of task YAML files (default: data_templates/)"}
    )
    item_noun: str = field(default="item", metadata={"help": "what prompts call one item"})
    items_noun: str = field(default="items", metadata={"help": "what prompts call items"})
    format: Literal["auto", "prompt_completion", "conversational"] = field(
        default="auto",
        metadata={"help": "auto: conversational when the tokenizer has a chat template"},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "conversational format: optional system message"}
    )
    tokenizer: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' (BPE trained here on catalog text + prompts) or a HF "
            "tokenizer name/folder"
        },
    )
    # The byte-level BPE starts from 256 bytes and 3 special tokens.
    tiny_vocab_size: int = field(
        default=4000, metadata={"help": "tiny tokenizer vocabulary", "min": 259}
    )
    seed: int = field(default=0, metadata={"help": "paraphrase and mixture sampling", "min": 0})


def make_catalog(
    prepared: PreparedData, sid_map: SemanticIdMap, texts: list[str], cfg: InstructConfig
) -> Catalog:
    """The catalog templates see: items with a SID, their texts (in item-table order)."""
    items = prepared.items[prepared.items["item_id"].isin(set(sid_map.item_ids))]
    return Catalog.build(sid_map, items, texts, cfg.item_noun, cfg.items_noun)


def render_examples(
    prepared: PreparedData, sid_map: SemanticIdMap, texts: list[str], cfg: InstructConfig
) -> dict[str, list[Example]]:
    """Render every split's examples (pure; no tokenizer involved)."""
    templates = load_templates(cfg.templates_dir)
    for key, names in (("tasks", list(cfg.tasks)), ("eval_tasks", cfg.eval_tasks)):
        unknown = sorted(set(names) - set(templates))
        if unknown:
            raise ConfigError(
                f"names unknown task(s) {unknown}; templates define {sorted(templates)}",
                field=key,
            )
    if not any(w > 0 for w in cfg.tasks.values()):
        raise ConfigError(
            f"has no task with a weight above 0 ({cfg.tasks}): there is nothing to train on",
            field="tasks",
        )
    catalog = make_catalog(prepared, sid_map, texts, cfg)
    sids = dict(zip(sid_map.item_ids, sid_map.all_sids(), strict=True))
    rng = np.random.default_rng(cfg.seed)
    split = prepared.split
    train_cases = list(training_windows(split, cfg.max_history, cfg.min_history))
    events = None
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for task, weight in cfg.tasks.items():
        template = templates[task]
        if template.kind == "sequence":
            out["train"] += render_sequence_task(template, train_cases, catalog, sids, weight, rng)
        elif template.kind == "item":
            out["train"] += render_item_task(template, catalog, sids, weight, rng)
        else:
            if events is None:
                events = pd.read_parquet(prepared.path / EVENTS)
            reviews = training_reviews(events, split)
            if len(reviews) == 0:
                logger.info("task %s skipped: the data has no review text", task)
                continue
            out["train"] += render_review_task(template, reviews, catalog, sids, weight, rng)
    for name, part in (("validation", "valid"), ("test", "test")):
        cases = list(held_out_cases(split, part, cfg.max_history))  # type: ignore[arg-type]
        for task in cfg.eval_tasks:
            if templates[task].kind != "sequence":
                raise ConfigError(f"names {task!r}, not a sequence task", field="eval_tasks")
            out[name] += render_sequence_task(
                templates[task], cases, catalog, sids, 1.0, rng, fixed_paraphrase=0
            )
    if not out["train"]:
        raise UserError(
            f"no training examples: the tasks {sorted(cfg.tasks)} found nothing to render in "
            f"{prepared.path} (e.g. no user has more than min_history={cfg.min_history} training "
            "interactions, and no item-level task is on)"
        )
    return out


def check_inert(examples: dict[str, list[Example]], catalog: Catalog, tokenizer: Any) -> None:
    """Fail naming the item if catalog text would still turn into one of ``tokenizer``'s tokens.

    ``inert_text`` breaks every token-like string (``<...>``, ``[UPPER]``, SIDs); a special or
    added token that looks like none of them could still hide in a title. Such text is
    rejected rather than silently passed to training.
    """
    pattern = sid_token_pattern(catalog.sid_map.token_format)
    tokens = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    uncovered = sorted(t for t in tokens if len(t) > 1 and inert_text(t, pattern=pattern) == t)
    if not uncovered:
        return
    for item, fields in catalog.fields.items():
        for name, value in [("text", catalog.texts[item]), *fields.items()]:
            hit = next((t for t in uncovered if t in str(value)), None)
            if hit is not None:
                raise DataError(
                    f"item {item!r} holds {hit!r}, a special token of the tokenizer: it "
                    "would become that token in prompts; edit the item's text",
                    field=name,
                )
    for part in SPLITS:
        for e in examples[part]:
            hit = next((t for t in uncovered if t in e.prompt or t in e.completion), None)
            if hit is not None:
                raise DataError(
                    f"a {e.task} example (user {e.user_id!r}, item {e.target_item!r}) holds "
                    f"{hit!r}, a special token of the tokenizer: check its review text and "
                    "the template"
                )


def _rows(examples: list[Example], fmt: PromptFormat) -> dict[str, list]:
    return {
        "prompt": [fmt.prompt(e.prompt) for e in examples],
        "completion": [fmt.completion(e.completion) for e in examples],
        "task": [e.task for e in examples],
        "user_id": [e.user_id for e in examples],
        "history": [list(e.history) for e in examples],
        "target_item": [e.target_item for e in examples],
    }


def prompt_format(folder: Path, cfg: InstructConfig) -> PromptFormat:
    """The prompt format a finished instruct stage used (from its ``counts.json``)."""
    info = json.loads((folder / COUNTS).read_text(encoding="utf-8"))
    return PromptFormat(info["format"] == "conversational", cfg.system_prompt)


def load_item_texts(path: Path) -> dict[str, str]:
    """Item id → the text the index stage embedded (``item_text.jsonl``)."""
    with path.open(encoding="utf-8") as lines:
        return {row["item_id"]: row["text"] for row in map(json.loads, lines)}


def load_tokenizer(cfg: InstructConfig, corpus: list[str]) -> Any:
    """The tiny tokenizer trained on ``corpus``, or a pretrained one by name or folder."""
    if cfg.tokenizer == "tiny":
        from llmrec.tokens import train_tokenizer

        return train_tokenizer(corpus, vocab_size=cfg.tiny_vocab_size)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.tokenizer)


def build_instruct(cfg: InstructConfig, run: str | Path, force: bool = False) -> Path:
    """Run the instruct stage into ``<run>/instruct/`` (skipped when done with this config)."""
    from datasets import Dataset, DatasetDict

    from llmrec.tokens import add_sid_tokens, require_sid_roundtrip

    layout = RunLayout.of(run)
    prepared = PreparedData.load(layout.root)
    layout.stage(SIDS).require(f"llmrec index build --run {layout.root}")
    stage = layout.stage(INSTRUCT)
    key = layout.stage_key(cfg, upstream=[DATA, SIDS])

    def fill(tmp: Path) -> dict[str, Any]:
        sid_map = SemanticIdMap.load(layout.sid_map_file)
        texts_by_item = load_item_texts(layout.item_text_file)
        items = prepared.items[prepared.items["item_id"].isin(set(sid_map.item_ids))]
        texts = [texts_by_item[i] for i in items["item_id"].astype(str)]
        examples = render_examples(prepared, sid_map, texts, cfg)
        catalog = make_catalog(prepared, sid_map, texts, cfg)
        # SID tokens are added whole afterwards; training on them would only waste merges.
        corpus = list(catalog.texts.values()) + [
            sid_map.strip_tokens(e.prompt) for e in examples["train"][:20000]
        ]
        tokenizer = load_tokenizer(cfg, corpus)
        check_inert(examples, catalog, tokenizer)
        add_sid_tokens(tokenizer, sid_map)
        report = require_sid_roundtrip(tokenizer, sid_map)
        fmt = PromptFormat(
            cfg.format == "conversational"
            or (cfg.format == "auto" and bool(getattr(tokenizer, "chat_template", None))),
            cfg.system_prompt,
        )
        dataset = DatasetDict(
            {name: Dataset.from_dict(_rows(examples[name], fmt)) for name in SPLITS}
        )
        dataset.save_to_disk(str(tmp))
        tokenizer.save_pretrained(str(tmp / TOKENIZER))
        counts = {
            name: dict(sorted(Counter(e.task for e in examples[name]).items())) for name in SPLITS
        }
        write_json_atomic(
            tmp / COUNTS,
            {
                "counts": counts,
                "format": "conversational" if fmt.conversational else "prompt_completion",
                "roundtrip": {"items": report.n_items, "ok": report.ok},
                "examples": {
                    e.task: {"prompt": e.prompt, "completion": e.completion}
                    for e in examples["train"][::-1]
                },
            },
        )
        (tmp / CONFIG).write_text(dump_yaml(cfg), encoding="utf-8")
        return {}

    stage.build(key, fill, force=force)
    return stage.path


def format_summary(folder: Path) -> str:
    """Counts per split and task, the SID round trip, and one rendered example per task."""
    info = json.loads((folder / COUNTS).read_text())
    lines = [f"format: {info['format']}"]
    for split, counts in info["counts"].items():
        total = sum(counts.values())
        lines.append(
            f"{split:<11}{total:>9,}  " + ", ".join(f"{t} {n:,}" for t, n in counts.items())
        )
    rt = info["roundtrip"]
    lines.append(
        f"SID round trip: {rt['items']:,} items, "
        f"{'all exact' if rt['ok'] else 'FAILED'} (alone, after a prompt, in chat)"
    )
    for task, ex in info["examples"].items():
        lines.append(f"\n[{task}]\n  prompt: {ex['prompt']}\n  completion: {ex['completion']}")
    return "\n".join(lines)
