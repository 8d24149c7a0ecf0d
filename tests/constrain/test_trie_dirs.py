"""The vLLM processor opens tries only inside the folders the server's owner allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import (
    ARG_TRIE,
    TRIE_DIRS_ENV,
    _parse,
    check_trie_path,
    load_trie,
    save_trie,
    trie_dir,
)


def _trie() -> ItemTrie:
    return ItemTrie.from_sequences(np.array([[3, 9], [4, 9]]), ["a", "b"], end_token_id=9)


def test_default_folder_is_allowed_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRIE_DIRS_ENV, raising=False)
    inside = save_trie(_trie(), trie_dir() / "test-allowed.pt")
    try:
        assert check_trie_path(str(inside)) == inside.resolve()
        assert list(load_trie(str(inside)).item_ids) == ["a", "b"]
    finally:
        inside.unlink()
    outside = save_trie(_trie(), tmp_path / "trie.pt")
    with pytest.raises(ValueError, match=f"outside the trie folders.*{TRIE_DIRS_ENV}"):
        _parse({ARG_TRIE: str(outside)})
    # a path that climbs out of the allowed folder is resolved first
    with pytest.raises(ValueError, match="outside"):
        check_trie_path(str(trie_dir() / ".." / ".." / "etc" / "passwd"))


def test_owner_configured_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv(TRIE_DIRS_ENV, f"{a}:{b}")
    path = save_trie(_trie(), b / "trie.pt")
    assert _parse({ARG_TRIE: str(path)}) == (str(path), 0, ())
    # inside an allowed folder but missing: the same kind of error, no file opened
    with pytest.raises(ValueError, match="must name a trie file"):
        check_trie_path(str(a / "missing.pt"))
    with pytest.raises(ValueError, match="outside"):
        check_trie_path(str(tmp_path / "c" / "trie.pt"))
