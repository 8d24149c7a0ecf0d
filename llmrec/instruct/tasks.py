"""Instruction examples from a split and a SID map: pure functions, no tokenizer involved.

Training examples use training interactions only: every prefix of a user's training sequence
(a sliding window of at most ``max_history`` items) predicts the item after it. Validation and
test examples are the split's held-out cases: the target is the held-out item and the history is
everything before it, never anything after.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.split import Part, Split
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.templates import TaskTemplate
from llmrec.templating import inert_text, inert_value


@dataclass(frozen=True)
class Case:
    """One thing to predict: a user's history and the item that follows it."""

    user_id: str
    history: tuple[str, ...]
    target: str


def training_windows(split: Split, max_history: int, min_history: int = 1) -> Iterator[Case]:
    """Every prefix of each user's training sequence, truncated to ``max_history`` items."""
    for user, seq in zip(split.table["user_id"], split.table["train_items"], strict=True):
        seq = list(seq)
        for t in range(max(1, min_history), len(seq)):
            yield Case(str(user), tuple(seq[max(0, t - max_history) : t]), str(seq[t]))


def held_out_cases(split: Split, part: Part, max_history: int) -> Iterator[Case]:
    """The split's validation or test cases, histories truncated to the last ``max_history``."""
    cases = split.cases(part)
    for user, history, target in zip(
        cases["user_id"], cases["history"], cases["target"], strict=True
    ):
        yield Case(str(user), tuple(list(history)[-max_history:]), str(target))


@dataclass(frozen=True)
class Catalog:
    """What templates may say about items: SIDs, titles, texts and raw fields."""

    sid_map: SemanticIdMap
    titles: Mapping[str, str]
    texts: Mapping[str, str]
    fields: Mapping[str, dict[str, Any]]
    item_noun: str = "item"
    items_noun: str = "items"

    @classmethod
    def build(
        cls,
        sid_map: SemanticIdMap,
        items: pd.DataFrame,
        texts: list[str],
        item_noun: str,
        items_noun: str,
    ) -> Catalog:
        """Index a prepared item table (only items that have a SID).

        This is where catalog text enters every prompt (training, evaluation, serving), so
        titles, texts and string fields are made inert here (``inert_text``): a title holding
        ``<|im_end|>`` or another item's SID stays plain text for the tokenizer. Items without
        a ``title`` use their text as one.
        """
        pattern = sid_token_pattern(sid_map.token_format)
        ids = items["item_id"].astype(str).tolist()
        safe_texts = [inert_text(t, pattern=pattern) for t in texts]
        titles = (
            [inert_text(t, pattern=pattern) for t in items["title"].astype(str)]
            if "title" in items
            else safe_texts
        )
        records = [
            {
                str(k): inert_value(v.tolist() if isinstance(v, np.ndarray) else v, pattern)
                for k, v in r.items()
            }
            | {"title": title}
            for r, title in zip(items.to_dict("records"), titles, strict=True)
        ]
        return cls(
            sid_map,
            dict(zip(ids, titles, strict=True)),
            dict(zip(ids, safe_texts, strict=True)),
            dict(zip(ids, records, strict=True)),
            item_noun,
            items_noun,
        )


def sid_token_pattern(token_format: str) -> re.Pattern[str]:
    """A regex for one SID token of ``token_format`` (as ``SemanticIdMap`` writes them)."""
    fmt = re.escape(token_format)
    fmt = fmt.replace(re.escape("{prefix}"), r"[^\W\d_]+")
    return re.compile(fmt.replace(re.escape("{code}"), r"\d+"))


@dataclass(frozen=True)
class Example:
    """A rendered example with what evaluation needs to score it."""

    task: str
    user_id: str
    history: tuple[str, ...]
    target_item: str
    prompt: str
    completion: str


def sequence_variables(case: Case, catalog: Catalog, sids: Mapping[str, str]) -> dict[str, Any]:
    """Template variables of a sequence example."""
    return {
        "history_sids": [sids[i] for i in case.history],
        "history_titles": [catalog.titles[i] for i in case.history],
        "target_sid": sids[case.target],
        "target_title": catalog.titles[case.target],
        "item_noun": catalog.item_noun,
        "items_noun": catalog.items_noun,
    }


def item_variables(item: str, catalog: Catalog, sids: Mapping[str, str]) -> dict[str, Any]:
    """Template variables of an item (alignment) example."""
    return {
        "item": catalog.fields[item],
        "item_text": catalog.texts[item],
        "target_sid": sids[item],
        "item_noun": catalog.item_noun,
        "items_noun": catalog.items_noun,
    }


def mixture_indices(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` candidates to render, ``weight`` times over on average (sorted)."""
    if weight <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    whole, frac = int(weight), weight - int(weight)
    picks = [np.tile(np.arange(n), whole)]
    if frac > 0:
        picks.append(np.sort(rng.choice(n, size=round(frac * n), replace=False)))
    return np.sort(np.concatenate(picks), kind="stable")


def render_sequence_task(
    template: TaskTemplate,
    cases: list[Case],
    catalog: Catalog,
    sids: Mapping[str, str],
    weight: float,
    rng: np.random.Generator,
    fixed_paraphrase: int | None = None,
) -> list[Example]:
    """Render a sequence task over cases; a seeded paraphrase per example unless fixed."""
    chosen = mixture_indices(len(cases), weight, rng)
    n_para = len(template.paraphrases)
    paras = (
        np.full(len(chosen), fixed_paraphrase)
        if fixed_paraphrase is not None
        else rng.integers(0, n_para, size=len(chosen))
    )
    out = []
    for idx, para in zip(chosen, paras, strict=True):
        case = cases[int(idx)]
        prompt, completion = template.render(int(para), sequence_variables(case, catalog, sids))
        out.append(
            Example(template.task, case.user_id, case.history, case.target, prompt, completion)
        )
    return out


def render_item_task(
    template: TaskTemplate,
    catalog: Catalog,
    sids: Mapping[str, str],
    weight: float,
    rng: np.random.Generator,
) -> list[Example]:
    """Render an item-alignment task, one example per item (times the weight)."""
    items = list(catalog.sid_map.item_ids)
    chosen = mixture_indices(len(items), weight, rng)
    paras = rng.integers(0, len(template.paraphrases), size=len(chosen))
    out = []
    for idx, para in zip(chosen, paras, strict=True):
        item = items[int(idx)]
        prompt, completion = template.render(int(para), item_variables(item, catalog, sids))
        out.append(Example(template.task, "", (), item, prompt, completion))
    return out


def training_reviews(events: pd.DataFrame, split: Split) -> pd.DataFrame:
    """Reviews from training interactions only (held-out user-item pairs are removed)."""
    if "review" not in events.columns:
        return events.iloc[0:0]
    held = split.cases("valid")[["user_id", "target"]]
    held = pd.concat([held, split.cases("test")[["user_id", "target"]]])
    keys = set(zip(held["user_id"].astype(str), held["target"].astype(str), strict=True))
    pairs = zip(events["user_id"].astype(str), events["item_id"].astype(str), strict=True)
    keep = np.array([p not in keys for p in pairs], dtype=bool)
    reviews = events[keep & (events["review"].astype(str).str.len() > 0).to_numpy()]
    return reviews[reviews["user_id"].isin(split.table["user_id"])]


def render_review_task(
    template: TaskTemplate,
    reviews: pd.DataFrame,
    catalog: Catalog,
    sids: Mapping[str, str],
    weight: float,
    rng: np.random.Generator,
    max_chars: int = 500,
) -> list[Example]:
    """Render a review → item task from training reviews."""
    rows = list(
        zip(
            reviews["user_id"].astype(str),
            reviews["item_id"].astype(str),
            reviews["review"].astype(str),
            strict=True,
        )
    )
    rows = [r for r in rows if r[1] in sids]
    chosen = mixture_indices(len(rows), weight, rng)
    paras = rng.integers(0, len(template.paraphrases), size=len(chosen))
    out = []
    for idx, para in zip(chosen, paras, strict=True):
        user, item, review = rows[int(idx)]
        # Review text is user-written catalog text too: inert like titles (see Catalog.build).
        pattern = sid_token_pattern(catalog.sid_map.token_format)
        variables = {
            **item_variables(item, catalog, sids),
            "review": inert_text(review[:max_chars], pattern=pattern),
        }
        prompt, completion = template.render(int(para), variables)
        out.append(Example(template.task, user, (), item, prompt, completion))
    return out
