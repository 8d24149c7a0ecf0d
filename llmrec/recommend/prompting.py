"""Prompts for recommendation, token for token the ones the model was trained on.

The instruct stage's evaluation prompt (its first eval task, first paraphrase) is rendered for a
history and tokenised exactly as TRL's ``SFTTrainer`` tokenises a prompt: through the chat
template with ``add_generation_prompt=True`` for conversational data, else plain. The token that
followed each SID in training (EOS, or the chat template's end-of-turn token) is what ends an
item in the trie.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llmrec.config import load_config
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.build import InstructConfig
from llmrec.instruct.tasks import Case, Catalog, sequence_variables
from llmrec.instruct.templates import TaskTemplate, load_templates
from llmrec.io import StageDir


def completion_end_token(tokenizer: Any, conversational: bool) -> int:
    """The token that follows a completion in training: end of turn in chat, else EOS."""
    if not conversational:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id")
        return int(tokenizer.eos_token_id)
    probe = "zq"  # any short text: we only look at what the template puts after it
    prompt = [{"role": "user", "content": "hi"}]
    head = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": probe}], tokenize=True, return_dict=True
    )["input_ids"]
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    rest = list(full[len(head) + len(body) :])
    if list(full[: len(head)]) != list(head) or not rest:
        raise ValueError("cannot tell which token ends an assistant turn in this chat template")
    return int(rest[0])


@dataclass(frozen=True)
class PromptBuilder:
    """Turns histories into the token ids of the run's evaluation prompt."""

    template: TaskTemplate
    catalog: Catalog
    sids: dict[str, str]
    tokenizer: Any
    conversational: bool
    system_prompt: str | None
    max_history: int

    @classmethod
    def from_run(cls, run: str | Path, tokenizer: Any | None = None) -> PromptBuilder:
        """The prompt the run's instruct stage used for validation and test."""
        run = Path(run)
        folder = StageDir(run, "instruct").require(f"llmrec instruct build --run {run}")
        cfg = load_config(InstructConfig, folder / "config.yaml")
        info = json.loads((folder / "counts.json").read_text())
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
        items = pd.read_parquet(run / "data" / "items.parquet")
        items = items[items["item_id"].isin(set(sid_map.item_ids))]
        texts_by_item = {
            json.loads(line)["item_id"]: json.loads(line)["text"]
            for line in (run / "sids" / "item_text.jsonl").open(encoding="utf-8")
        }
        texts = [texts_by_item[i] for i in items["item_id"].astype(str)]
        catalog = Catalog.build(sid_map, items, texts, cfg.item_noun, cfg.items_noun)
        template = load_templates(cfg.templates_dir)[cfg.eval_tasks[0]]
        return cls(
            template,
            catalog,
            dict(zip(sid_map.item_ids, sid_map.all_sids(), strict=True)),
            tokenizer,
            info["format"] == "conversational",
            cfg.system_prompt,
            cfg.max_history,
        )

    def text(self, history: Sequence[str]) -> str:
        """The user-facing prompt text for a history."""
        history = tuple(history)[-self.max_history :]
        unknown = [i for i in history if i not in self.sids]
        if unknown:
            raise KeyError(f"items without a semantic ID: {unknown[:5]}")
        case = Case("", history, history[-1] if history else next(iter(self.sids)))
        prompt, _ = self.template.render(0, sequence_variables(case, self.catalog, self.sids))
        return prompt

    def encode(self, history: Sequence[str]) -> list[int]:
        """Prompt token ids, exactly as SFT saw prompts."""
        text = self.text(history)
        if not self.conversational:
            return list(self.tokenizer(text)["input_ids"])
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(out["input_ids"])

    @property
    def end_token_id(self) -> int:
        """The token that ends an item (see ``completion_end_token``)."""
        return completion_end_token(self.tokenizer, self.conversational)
