"""Prompts for recommendation, token for token the ones the model was trained on, and the item
trie that goes with them.

The instruct stage's evaluation prompt (its first eval task, first paraphrase) is rendered for a
history and tokenised by the run's ``PromptFormat`` — the one format instruct, training,
validation, evaluation and serving share. ``RunDecoding.load(run)`` assembles what decoding a
run's model needs (prompts, SID map, trie), once, for every caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.config import load_config
from llmrec.constrain.trie import ItemTrie
from llmrec.errors import UserError
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.build import InstructConfig, load_item_texts, prompt_format
from llmrec.instruct.prompt import PromptFormat
from llmrec.instruct.tasks import Case, Catalog, sequence_variables
from llmrec.instruct.templates import TaskTemplate, load_templates
from llmrec.run import CONFIG, INSTRUCT, RunLayout


@dataclass(frozen=True)
class PromptBuilder:
    """Turns histories into the token ids of the run's evaluation prompt."""

    template: TaskTemplate
    catalog: Catalog
    sids: dict[str, str]
    tokenizer: Any
    format: PromptFormat
    max_history: int

    @classmethod
    def from_run(cls, run: str | Path | RunLayout, tokenizer: Any | None = None) -> PromptBuilder:
        """The prompt the run's instruct stage used for validation and test."""
        layout = RunLayout.of(run)
        folder = layout.stage(INSTRUCT).require(f"llmrec instruct build --run {layout.root}")
        cfg = load_config(InstructConfig, folder / CONFIG)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer_dir)
        sid_map = SemanticIdMap.load(layout.sid_map_file)
        items = pd.read_parquet(layout.items_file)
        items = items[items["item_id"].isin(set(sid_map.item_ids))]
        texts_by_item = load_item_texts(layout.item_text_file)
        texts = [texts_by_item[i] for i in items["item_id"].astype(str)]
        catalog = Catalog.build(sid_map, items, texts, cfg.item_noun, cfg.items_noun)
        template = load_templates(cfg.templates_dir)[cfg.eval_tasks[0]]
        sids = dict(zip(sid_map.item_ids, sid_map.all_sids(), strict=True))
        return cls(template, catalog, sids, tokenizer, prompt_format(folder, cfg), cfg.max_history)

    def text(self, history: Sequence[str]) -> str:
        """The user-facing prompt text for a history (its last ``max_history`` items)."""
        history = tuple(history)[-self.max_history :]
        unknown = [i for i in history if i not in self.sids]
        if unknown:
            raise UserError(f"items without a semantic ID: {unknown[:5]}", field="history")
        case = Case("", history, history[-1] if history else next(iter(self.sids)))
        prompt, _ = self.template.render(0, sequence_variables(case, self.catalog, self.sids))
        return prompt

    def encode(self, history: Sequence[str]) -> list[int]:
        """Prompt token ids, exactly as SFT saw prompts."""
        return self.format.encode(self.tokenizer, self.text(history))

    @property
    def end_token_id(self) -> int:
        """The token that ends an item (see ``PromptFormat.end_token_id``)."""
        return self.format.end_token_id(self.tokenizer)


@dataclass(frozen=True)
class RunDecoding:
    """What decoding a run's model needs: its prompts, its SID map and the item trie."""

    prompts: PromptBuilder
    sid_map: SemanticIdMap
    trie: ItemTrie

    @classmethod
    def load(cls, run: str | Path | RunLayout, tokenizer: Any | None = None) -> RunDecoding:
        """From the run's instruct and index stages (``tokenizer``: the run's by default)."""
        layout = RunLayout.of(run)
        prompts = PromptBuilder.from_run(layout, tokenizer)
        sid_map = SemanticIdMap.load(layout.sid_map_file)
        trie = ItemTrie.from_sid_map(sid_map, prompts.tokenizer, prompts.end_token_id)
        return cls(prompts, sid_map, trie)

    @property
    def titles(self) -> dict[str, str]:
        """Item id → title (or item text where the catalog has no titles)."""
        return dict(self.prompts.catalog.titles)
