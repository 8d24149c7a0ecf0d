"""Instruction examples: literal item text, no leakage, mixture weights, template errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.config import ConfigError
from llmrec.data import PreparedData, leave_one_out
from llmrec.errors import UserError
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.instruct.build import InstructConfig, render_examples
from llmrec.instruct.tasks import mixture_indices
from llmrec.instruct.templates import load_template, load_templates
from llmrec.templating import TemplateError

TRICKY = "{{ 7*7 }} and {% if true %}yes{% endif %}"


def make_prepared(
    tmp_path: Path, n_users: int = 12, n_items: int = 30, reviews: bool = False
) -> PreparedData:
    """A prepared run in memory: random histories of 5-9 items per user."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(5, 10)), replace=False)
        rows += [(f"u{u}", f"i{i}", t, f"review of i{i} by u{u}") for t, i in enumerate(items)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "review"])
    if not reviews:
        events = events.drop(columns="review")
    events.to_parquet(tmp_path / "events.parquet")
    ids = sorted(set(events["item_id"]), key=lambda s: int(s[1:]))
    titles = [TRICKY if i == "i3" else f"Title {i}" for i in ids]
    items = pd.DataFrame({"item_id": ids, "title": titles})
    return PreparedData(tmp_path, leave_one_out(events), items, {})


def make_map(items: pd.DataFrame) -> SemanticIdMap:
    n = len(items)
    codes = np.stack([np.arange(n) // 8, np.arange(n) % 8], axis=1)
    return SemanticIdMap(tuple(items["item_id"]), codes, (8, 8))


def render(prepared: PreparedData, **cfg: object) -> dict:
    sid_map = make_map(prepared.items)
    texts = prepared.items["title"].tolist()
    return render_examples(prepared, sid_map, texts, InstructConfig(**cfg))  # type: ignore[arg-type]


def test_item_text_with_template_syntax_is_rendered_literally(tmp_path: Path) -> None:
    prepared = make_prepared(tmp_path)
    examples = render(prepared, tasks={"item2sid": 1.0, "sid2title": 1.0, "title_seqrec": 1.0})
    about_i3 = [e for e in examples["train"] if e.target_item == "i3" and e.task != "title_seqrec"]
    assert {e.task for e in about_i3} == {"item2sid", "sid2title"}
    for e in about_i3:
        assert TRICKY in (e.prompt if e.task == "item2sid" else e.completion)
        assert "49" not in e.prompt + e.completion
    in_history = [e for e in examples["train"] if e.task == "title_seqrec" and "i3" in e.history]
    assert in_history and all(TRICKY in e.prompt for e in in_history)


def test_no_leakage_between_training_and_held_out(tmp_path: Path) -> None:
    prepared = make_prepared(tmp_path)
    examples = render(prepared, max_history=4)
    table = prepared.split.table.set_index("user_id")
    for e in examples["train"]:
        if not e.user_id:
            continue  # item-alignment examples involve no user
        train = list(table.loc[e.user_id, "train_items"])
        window = [*e.history, e.target_item]
        # The example is a contiguous window of the training sequence: it never reaches a
        # validation or test position.
        starts = [s for s in range(len(train)) if train[s : s + len(window)] == window]
        assert starts, (e.user_id, window, train)
        assert len(e.history) <= 4
    for name, target_col in (("validation", "valid_item"), ("test", "test_item")):
        assert len(examples[name]) == len(table)
        for e in examples[name]:
            row = table.loc[e.user_id]
            full = [*row["train_items"], row["valid_item"], row["test_item"]]
            pos = len(row["train_items"]) + (0 if name == "validation" else 1)
            assert e.target_item == row[target_col] == full[pos]
            assert list(e.history) == full[:pos][-4:]  # only what came before the target
    # No training example predicts a held-out target at the held-out position.
    held = {
        (e.user_id, e.history, e.target_item) for n in ("validation", "test") for e in examples[n]
    }
    assert not held & {(e.user_id, e.history, e.target_item) for e in examples["train"]}


def test_eval_prompts_use_the_fixed_first_paraphrase(tmp_path: Path) -> None:
    examples = render(make_prepared(tmp_path))
    first = load_templates()["seqrec"].paraphrases[0].prompt.split("{{")[0].strip()
    assert all(e.prompt.startswith(first) for e in examples["test"])
    assert all(e.completion.startswith("<a_") for e in examples["test"])


def test_mixture_weights(tmp_path: Path) -> None:
    prepared = make_prepared(tmp_path)
    one = render(prepared, tasks={"seqrec": 1.0})
    n = len(one["train"])
    assert len(render(prepared, tasks={"seqrec": 0.5})["train"]) == round(0.5 * n)
    twice = render(prepared, tasks={"seqrec": 2.0})["train"]
    assert len(twice) == 2 * n
    assert len({e.prompt for e in twice}) > n  # the copies draw other paraphrases
    # A mixture that renders nothing is a mistake, not an empty training set.
    with pytest.raises(ConfigError, match=r"tasks: has no task with a weight above 0"):
        render(prepared, tasks={"seqrec": 0.0})
    rng = np.random.default_rng(0)
    assert list(mixture_indices(4, 1.5, rng)).count(0) in (1, 2)


def test_reviews_from_training_interactions_only(tmp_path: Path) -> None:
    prepared = make_prepared(tmp_path, reviews=True)
    examples = render(prepared, tasks={"review2item": 1.0})["train"]
    table = prepared.split.table.set_index("user_id")
    assert examples
    for e in examples:
        assert e.target_item in list(table.loc[e.user_id, "train_items"])
        assert f"review of {e.target_item} by {e.user_id}" in e.prompt
    # Without review text the task is skipped, not an error, unless nothing else is left.
    (tmp_path / "plain").mkdir()
    plain = make_prepared(tmp_path / "plain")
    mixed = render(plain, tasks={"review2item": 1.0, "seqrec": 1.0})["train"]
    assert mixed and {e.task for e in mixed} == {"seqrec"}
    with pytest.raises(UserError, match="no training examples"):
        render(plain, tasks={"review2item": 1.0})


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        render(make_prepared(tmp_path), tasks={"nope": 1.0})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: t\nkind: sequence\n", "field 'paraphrases' is missing"),
        ("task: t\nkind: other\nparaphrases: [{prompt: a, response: b}]\n", "field 'kind'"),
        ("task: t\nkind: item\nparaphrases: [{prompt: a}]\n", "paraphrase 1 needs"),
        (
            "task: t\nkind: item\nparaphrases: [{prompt: '{% if %}', response: b}]\n",
            "paraphrase 1 prompt:1",
        ),
        ("task: [unclosed\n", "not valid YAML"),
    ],
)
def test_template_file_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TemplateError, match=message) as info:
        load_template(path)
    assert "bad.yaml" in str(info.value)


def test_shipped_templates_load_with_several_paraphrases() -> None:
    templates = load_templates()
    assert {"seqrec", "title_seqrec", "item2sid", "sid2title", "review2item"} <= set(templates)
    # seqrec_lm is plain SIDs back to back (language-model style): no wording to vary.
    assert len(templates["seqrec_lm"].paraphrases) == 1
    assert all(len(t.paraphrases) >= 2 for name, t in templates.items() if name != "seqrec_lm")
