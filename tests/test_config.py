"""Typed configs: YAML + dotted overrides, validation errors that name the key, stable hashes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from llmrec.config import ConfigError, config_hash, dump_yaml, iter_help, load_config, to_dict
from llmrec.data import DataConfig


@dataclass
class Inner:
    size: int = field(default=3, metadata={"help": "how many"})
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.5
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  mode: b\n")
    cfg = load_config(Outer, path, ["inner.size=7", "rate=1", "tags=[p, q]", "limit=null"])
    assert cfg == Outer(name="y", rate=1.0, tags=["p", "q"], limit=None, inner=Inner(7, "b"))
    assert isinstance(cfg.rate, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.size=big", r"inner\.size: expected an integer, got 'big'"),
        ("inner.mode=c", r"inner\.mode: 'c' is not one of 'a', 'b'"),
        ("inner.nope=1", r"unknown key\(s\) nope"),
        ("oops", r"must look like key\.sub=value"),
        ("name.sub=1", r"'name' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Outer, tmp_path / "list.yaml")


def test_hash_is_stable_and_content_based() -> None:
    a, b = Outer(tags=["x"]), Outer(tags=["x"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(Outer(tags=["y"]))
    overrides = [f"{k}={json.dumps(v)}" for k, v in to_dict(a).items() if k != "inner"]
    assert load_config(Outer, None, overrides) == a


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(DataConfig, None, ["filters.min_rating=4", "split.method=temporal"])
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    assert load_config(DataConfig, tmp_path / "c.yaml") == cfg


def test_every_field_has_help() -> None:
    rows = list(iter_help(DataConfig))
    assert {"dataset.name", "filters.min_user_interactions", "split.ratios"} <= {
        key for key, _, _ in rows
    }
    assert all(text for _, _, text in rows)


def test_recipes_load() -> None:
    """Every YAML under recipes/data loads into its config class."""
    recipes = sorted((Path(__file__).parents[1] / "recipes" / "data").glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_config(DataConfig, path)


def test_a_mapping_field_in_a_file_replaces_its_default(tmp_path: Path) -> None:
    from llmrec.instruct.build import InstructConfig

    (tmp_path / "c.yaml").write_text("tasks: {seqrec_lm: 1.0}\n")
    assert load_config(InstructConfig, tmp_path / "c.yaml").tasks == {"seqrec_lm": 1.0}
