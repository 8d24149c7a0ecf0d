"""Grounding garbled endpoint answers to catalog items, on fixed strings: numbering, typos,
extra words, articles, a missing or wrong year, duplicates, and lines that name nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest

from llmrec.zeroshot.build import _text_key, build_zeroshot
from llmrec.zeroshot.catalog import ZeroShotCatalog
from llmrec.zeroshot.config import GroundingSection, ZeroShotSection
from llmrec.zeroshot.endpoint import ChatPrompt
from llmrec.zeroshot.grounding import Grounder, answer_lines, normalise

# ML-100K's own spellings (trailing articles, alternative titles, films listed twice).
ROWS = [
    ("1", "Toy Story", "1995"),
    ("2", "GoldenEye", "1995"),
    ("12", "Usual Suspects, The", "1995"),
    ("218", "Cape Fear", "1991"),
    ("673", "Cape Fear", "1962"),
    ("50", "Star Wars", "1977"),
    ("181", "Return of the Jedi", "1983"),
    ("6", "Shanghai Triad (Yao a yao yao dao waipo qiao)", "1995"),
    ("246", "Chasing Amy", "1997"),
    ("268", "Chasing Amy", "1997"),
    ("71", "Lion King, The", "1994"),
    ("100", "Fargo", "1996"),
    ("174", "Raiders of the Lost Ark", "1981"),
]
ITEMS = pd.DataFrame(ROWS, columns=["item_id", "title", "year"])

# (answer line, expected item, expected method)
CASES = [
    ("1. Toy Story (1995)", "1", "exact"),  # numbering
    ("2) The Usual Suspects", "12", "exact"),  # the article in front
    ("Usual Suspects, The (1995)", "12", "exact"),
    ("**Return of the Jedi**", "181", "exact"),  # markdown
    ("- Fargo", "100", "exact"),  # a bullet
    ("Goldeneye", "2", "exact"),  # case
    ("Lion King", "71", "exact"),  # no article at all
    ("Shanghai Triad", "6", "exact"),  # without its alternative title
    ("Cape Fear (1962)", "673", "exact"),  # the year settles a duplicate title
    ("Cape Fear (1991)", "218", "exact"),
    ("Cape Fear", "218", "exact-noyear"),  # missing year: ambiguous, first item
    ("Toy Story (1999)", "1", "exact-noyear"),  # wrong year
    ("Chasing Amy (1997)", "246", "exact"),  # listed twice with one year: either is right
    ("Star Wars (1977) - a space opera classic", "50", "exact"),  # a reason after a dash
    ("Fargo (1996) — because you liked thrillers", "100", "exact"),
    ("Toy Stroy (1995)", "1", "fuzzy"),  # a typo
    ("Golden Eye", "2", "fuzzy"),
    ("Toy Story 1995", "1", "fuzzy"),  # a bare year
    ("I think you'd love Return of the Jedi", "181", "fuzzy"),  # extra words
    ("Indiana Jones and the Raiders of the Lost Ark", "174", "fuzzy"),
    ("Some Movie That Does Not Exist", None, "none"),
    ("A kids cartoon about toys that come alive", None, "none"),
]


@pytest.fixture(scope="module")
def grounder() -> Grounder:
    return Grounder(ZeroShotCatalog.from_items(ITEMS, _text_key))


def test_endpoint_names_tell_duplicates_apart(grounder: Grounder) -> None:
    names = dict(zip(grounder.catalog.item_ids, grounder.catalog.names, strict=True))
    assert names["218"] == "Cape Fear (1991)" and names["673"] == "Cape Fear (1962)"
    assert names["246"] == "Chasing Amy (1997) [246]" and names["268"] == "Chasing Amy (1997) [268]"
    assert names["1"] == "Toy Story"


@pytest.mark.parametrize(("line", "item", "method"), CASES)
def test_garbled_lines_ground_to_the_right_item(
    grounder: Grounder, line: str, item: str | None, method: str
) -> None:
    (got,) = grounder.ground([line])
    assert (got.item, got.method) == (item, method), got
    assert got.line == line
    assert 0.0 <= got.score <= 1.0
    if method == "none":
        assert got.score < 0.85  # the best score is kept, below every threshold


def test_ties_prefer_an_allowed_item(grounder: Grounder) -> None:
    index = grounder.catalog.index
    (got,) = grounder.ground(["Cape Fear"], allowed={index["673"]})
    assert got.item == "673"


def test_embedding_step_and_its_threshold() -> None:
    catalog = ZeroShotCatalog.from_items(ITEMS, _text_key)
    # Fuzzy matching off, so only the MiniLM nearest neighbour can ground a line.
    strict = Grounder(catalog, GroundingSection(fuzzy_min=1.01))
    near, far = strict.ground(["Raiders of Lost Ark Indiana Jones", "Jedi returns"])
    assert (near.item, near.method) == ("174", "embedding") and near.score >= 0.8
    assert (far.item, far.method) == (None, "none") and 0.5 < far.score < 0.8
    off = Grounder(catalog, GroundingSection(fuzzy_min=1.01, embedding=False))
    assert off.ground(["Raiders of Lost Ark Indiana Jones"])[0].method == "none"


def test_normalise_and_answer_lines() -> None:
    assert (
        normalise("Usual Suspects, The (1995)")
        == normalise("the usual suspects")
        == ("usual suspects")
    )
    assert normalise("3. Amélie!") == "amélie"
    assert answer_lines("Here are my picks:\n\n1. Fargo\n 2. Heat \n") == ["1. Fargo", "2. Heat"]


class CannedClient:
    """An endpoint that answers every prompt with the same text (no HTTP)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[ChatPrompt] = []

    def complete_many(self, prompts: Sequence[ChatPrompt]) -> list[str]:
        self.prompts += prompts
        return [self.text for _ in prompts]


def test_endpoint_answers_become_valid_slots_and_validity_is_counted() -> None:
    answer = (
        "Sure! Here are some movies:\n1. Toy Stroy (1995)\n2. Fargo\n3. Fargo\n"
        "4. The Usual Suspects\n5. Some Movie That Does Not Exist\n6. Star Wars"
    )
    client: Any = CannedClient(answer)
    section = ZeroShotSection(backend="openai", grounding=GroundingSection(embedding=False))
    rec = build_zeroshot(ITEMS, section, client=client)
    items, scores = rec.recommend([["50"]], 4, [{"50"}])
    # Star Wars is seen (excluded), Fargo repeats, one line names nothing: 3 usable items.
    assert items == [["1", "100", "12", ""]]
    assert list(scores[0][:3]) == [0.0, -1.0, -2.0]
    stats = rec.stats.as_dict()
    assert stats["lines"] == 6
    assert stats["fates"] == {"used": 3, "repeated": 1, "ungrounded": 1, "excluded": 1}
    assert stats["validity"] == pytest.approx(3 / 6)
    assert stats["methods"] == {"fuzzy": 1, "exact": 4, "none": 1}
    assert "- title: Star Wars. year: 1977" in client.prompts[0].user  # history as item text
    # Candidate mode: a grounded item outside the candidates is not used.
    rec.recommend([["50"]], 4, [set(ITEMS["item_id"]) - {"1", "12"}])
    request, _ = rec.last[0]
    assert set(request.candidates or ()) == {"1", "12"}
    assert rec.stats.fates["not_candidate"] >= 1
