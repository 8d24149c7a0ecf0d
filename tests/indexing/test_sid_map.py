"""SemanticIdMap: lookups, token rendering and parsing, the versioned file and its hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.indexing.sid_map import SemanticIdError, SemanticIdMap


def small_map() -> SemanticIdMap:
    codes = np.array([[0, 1, 2], [0, 1, 3], [4, 0, 0]])
    return SemanticIdMap(("i1", "i2", "i3"), codes, (5, 2, 4), metadata={"method": "test"})


def test_lookups_and_tokens() -> None:
    m = small_map()
    assert m.sid("i2") == "<a_0><b_1><c_3>"
    assert m.tokens_of("i3") == ["<a_4>", "<b_0>", "<c_0>"]
    assert m.all_sids()[0] == "<a_0><b_1><c_2>"
    assert m.item_of_codes([4, 0, 0]) == "i3" and m.item_of_codes([1, 1, 1]) is None
    assert m.parse("<a_0><b_1><c_3>") == (0, 1, 3)
    assert m.item_of_sid("<a_0><b_1><c_2>") == "i1"
    assert len(m.vocabulary()) == 5 + 2 + 4 and "<b_1>" in m.vocabulary()
    with pytest.raises(KeyError, match="'nope' has no semantic ID"):
        m.codes_of("nope")


@pytest.mark.parametrize("text", ["<a_0><b_1>", "<a_0><c_1><c_2>", "<a_0><b_1><c_2>x", "abc"])
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(SemanticIdError):
        small_map().parse(text)


def test_custom_prefixes_and_format() -> None:
    m = SemanticIdMap(("x",), np.array([[3, 7]]), (8, 8), ("lvl", "sub"), "[{prefix}{code}]")
    assert m.sid("x") == "[lvl3][sub7]" and m.parse("[lvl3][sub7]") == (3, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codes": np.array([[0, 1, 2], [0, 1, 2], [4, 0, 0]])}, "share a semantic ID"),
        ({"codes": np.array([[0, 1, 2], [0, 1, 3], [5, 0, 0]])}, "outside its level"),
        ({"item_ids": ("i1", "i1", "i3")}, "item ids repeat"),
        ({"codebook_sizes": (5, 2)}, "3 levels but 2 sizes"),
        ({"token_format": "<{code}>"}, "token_format"),
    ],
)
def test_invalid_maps_are_refused(kwargs: dict, message: str) -> None:
    base = {
        "item_ids": ("i1", "i2", "i3"),
        "codes": np.array([[0, 1, 2], [0, 1, 3], [4, 0, 0]]),
        "codebook_sizes": (5, 2, 4),
    }
    with pytest.raises(SemanticIdError, match=message):
        SemanticIdMap(**{**base, **kwargs})


def test_file_round_trip_is_byte_stable(tmp_path: Path) -> None:
    m = small_map()
    m.save(tmp_path / "a.json")
    back = SemanticIdMap.load(tmp_path / "a.json")
    assert back.item_ids == m.item_ids and np.array_equal(back.codes, m.codes)
    assert back.metadata == m.metadata and back.content_hash == m.content_hash
    back.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_load_checks_hash_and_version(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    small_map().save(path)
    edited = path.read_text().replace('["i2",[0,1,3]]', '["i2",[0,1,1]]')
    path.write_text(edited)
    with pytest.raises(SemanticIdError, match="content hash mismatch"):
        SemanticIdMap.load(path)
    data = json.loads(small_map().to_json())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SemanticIdError, match="version 99"):
        SemanticIdMap.load(path)
    path.write_text("{not json")
    with pytest.raises(SemanticIdError, match="not valid JSON"):
        SemanticIdMap.load(path)


def test_with_items_keeps_existing_sids() -> None:
    m = small_map()
    grown = m.with_items(["i4"], np.array([[1, 0, 0]]))
    assert [grown.sid(i) for i in m.item_ids] == [m.sid(i) for i in m.item_ids]
    assert grown.sid("i4") == "<a_1><b_0><c_0>"
    with pytest.raises(SemanticIdError, match="share"):
        m.with_items(["i5"], np.array([[4, 0, 0]]))
