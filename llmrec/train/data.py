"""The SFT stage's datasets: the instruct stage's ``DatasetDict``, trimmed to what SFT needs.

Only ``prompt`` and ``completion`` reach the trainer. ``max_history`` re-renders the examples
through the instruct stage's own code with a different history length: the mixture and paraphrase
draws depend only on the number of examples, which the history length does not change, so the
result is the same examples with shorter (or longer) histories.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmrec.run import CONFIG, INSTRUCT, SIDS, RunLayout
from llmrec.train.config import SFTStageConfig

logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "completion")


def instruct_config(instruct_dir: Path) -> Any:
    """The instruct stage's resolved config, as it was built."""
    from llmrec.config import load_config
    from llmrec.instruct.build import InstructConfig

    return load_config(InstructConfig, instruct_dir / CONFIG)


def load_sft_datasets(cfg: SFTStageConfig, run: Path) -> tuple[Any, Any | None]:
    """``(train, validation)`` as in-memory ``Dataset`` s of prompt/completion rows."""
    from datasets import load_from_disk

    layout = RunLayout.of(run)
    instruct_dir = layout.stage(INSTRUCT).require(f"llmrec instruct build --run {layout.root}")
    icfg = instruct_config(instruct_dir)
    if cfg.max_history is not None and cfg.max_history != icfg.max_history:
        logger.info(
            "re-rendering the instructions with max_history=%d (instruct stage: %d)",
            cfg.max_history,
            icfg.max_history,
        )
        train, validation = _rerender(layout, replace(icfg, max_history=cfg.max_history))
    else:
        # In memory: TRL's tokenisation would otherwise write cache files into <run>/instruct/.
        data = load_from_disk(str(instruct_dir), keep_in_memory=True)
        train, validation = data["train"], data["validation"]
    train = train.select_columns(list(COLUMNS))
    validation = validation.select_columns(list(COLUMNS))
    seed = cfg.training.seed
    if cfg.train_samples is not None and cfg.train_samples < len(train):
        # No flatten_indices(): datasets re-casts nested chat columns row by row (minutes for
        # 40k rows); TRL's tokenising map reads through the indices just as well.
        train = train.shuffle(seed=seed).select(range(cfg.train_samples))
    if cfg.validation_size <= 0:
        return train, None
    if cfg.validation_size < len(validation):
        validation = validation.shuffle(seed=seed).select(range(cfg.validation_size))
    return train, validation


def _rerender(layout: RunLayout, icfg: Any) -> tuple[Any, Any]:
    """Train and validation rendered again from the split and SIDs with ``icfg``."""
    from datasets import Dataset

    from llmrec.data.prepare import PreparedData
    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.instruct.build import load_item_texts, prompt_format, render_examples

    layout.stage(SIDS).require(f"llmrec index build --run {layout.root}")
    prepared = PreparedData.load(layout.root)
    sid_map = SemanticIdMap.load(layout.sid_map_file)
    texts_by_item = load_item_texts(layout.item_text_file)
    items = prepared.items[prepared.items["item_id"].isin(set(sid_map.item_ids))]
    texts = [texts_by_item[i] for i in items["item_id"].astype(str)]
    examples = render_examples(prepared, sid_map, texts, icfg)
    fmt = prompt_format(layout.instruct_dir, icfg)

    def rows(split: str) -> Any:
        return Dataset.from_dict(
            {
                "prompt": [fmt.prompt(e.prompt) for e in examples[split]],
                "completion": [fmt.completion(e.completion) for e in examples[split]],
            }
        )

    return rows("train"), rows("validation")
