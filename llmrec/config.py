"""Typed configs: dataclasses ⇄ YAML, dotted command-line overrides, and a stable config hash.

Every stage has a ``@dataclass`` config whose fields carry ``metadata={"help": ...}`` (as TRL
does). The same classes are used by the CLI, the recipes under ``recipes/`` and library callers,
so a YAML file, ``key.sub=value`` overrides and Python keyword arguments all meet one schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from llmrec.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override does not fit the config's schema."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what YAML cannot express."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: " + "; ".join(errors))
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_mapping(tp, value, where)
    if origin in (list, tuple, Iterable) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            # YAML turns `1995` or `1e-3` into numbers; a str field takes them as text.
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# A config section may declare one ``dict[str, Any]`` field with ``metadata={PASSTHROUGH: True}``:
# every key of the section that is not one of its own fields lands there (e.g. the training
# section's TRL arguments), and ``to_dict`` writes those keys back at the section's level. The
# code that consumes the field validates the keys against their real owner (TRL's config).
PASSTHROUGH = "passthrough"


def passthrough_field(cls: Any) -> str | None:
    """The name of ``cls``'s passthrough field, if it has one."""
    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get(PASSTHROUGH)]
    return names[0] if names else None


def _from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    extra = passthrough_field(cls)
    if unknown and extra is None:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    data = dict(data)
    if extra is not None:
        data[extra] = {**(data.get(extra) or {}), **{k: data.pop(k) for k in unknown}}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def check_config(config: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass (nested sections too) against its bounds.

    Bounds are declared in the field's metadata next to its help text, e.g.
    ``field(default=20, metadata={"help": ..., "min": 1})``; see ``check_bounds``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, f"{prefix}{f.name}.")
        else:
            check_bounds(value, f.metadata, f"{prefix}{f.name}")


def check_bounds(value: Any, metadata: Mapping[str, Any], key: str) -> Any:
    """Check ``value`` against a field's declared bounds; return it unchanged.

    ``metadata`` may hold ``min`` / ``max`` (inclusive) and ``gt`` (exclusive) for numbers,
    applied to each element of a list and each value of a mapping, and ``min_items`` for lists
    and mappings. A value out of range fails naming the dotted ``key``.
    """
    min_items = metadata.get("min_items")
    if (
        min_items is not None
        and isinstance(value, list | tuple | Mapping)
        and len(value) < min_items
    ):
        raise ConfigError(
            f"needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}, got {value!r}",
            field=key,
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_bounds(v, {**metadata, "min_items": None}, f"{key}.{k}")
        return value
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_bounds(v, {**metadata, "min_items": None}, f"{key}[{i}]")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if "min" in metadata and not value >= metadata["min"]:
        raise ConfigError(f"must be at least {metadata['min']}, got {value!r}", field=key)
    if "gt" in metadata and not value > metadata["gt"]:
        raise ConfigError(f"must be greater than {metadata['gt']}, got {value!r}", field=key)
    if "max" in metadata and not value <= metadata["max"]:
        raise ConfigError(f"must be at most {metadata['max']}, got {value!r}", field=key)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build a config dataclass from a plain mapping, validating every key, type and range."""
    config = _from_mapping(cls, data or {}, "")
    check_config(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Turn a config dataclass into plain YAML/JSON-able data."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            extra = passthrough_field(v)
            out = {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if extra is not None:
                out.update(out.pop(extra))
            return out
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    result = plain(config)
    assert isinstance(result, dict)
    return result


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply dotted overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        data = loaded or {}
    return build_config(cls, data, overrides, f" (from {path})" if path is not None else "")


def build_config(
    cls: type[T], data: Mapping[str, Any], overrides: Iterable[str] = (), source: str = ""
) -> T:
    """``cls`` from its defaults, then ``data`` (e.g. a YAML section), then dotted overrides."""
    # Start from the defaults so overrides can reach into nested sections that data omits.
    merged = apply_overrides(_deep_merge(to_dict(cls()), data, cls), overrides)
    try:
        return from_dict(cls, merged)
    except ConfigError as err:
        raise ConfigError(
            err.message + source, file=err.file, line=err.line, field=err.field, row=err.row
        ) from None


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any], cls: Any) -> dict[str, Any]:
    """``top`` over ``base``, recursing only into nested config sections: a mapping-valued
    field (e.g. a task mixture) is replaced whole, never merged with its default."""
    hints = typing.get_type_hints(cls) if _is_dataclass_type(cls) else {}
    out = dict(base)
    for k, v in top.items():
        section = hints.get(k)
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and _is_dataclass_type(section):
            out[k] = _deep_merge(out[k], v, section)
        else:
            out[k] = v
    return out


def config_hash(config: Any) -> str:
    """A short, stable hash of a config's content (key order and formatting do not matter)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(config: Any) -> str:
    """Render a config as YAML in field order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def iter_help(cls: type, prefix: str = "", instance: Any = None) -> Iterator[tuple[str, str, str]]:
    """Yield ``(dotted key, default, help)`` for every leaf field of a config dataclass."""
    instance = cls() if instance is None else instance
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = getattr(instance, f.name)
        if _is_dataclass_type(hints[f.name]):
            yield from iter_help(hints[f.name], key + ".", default)
        elif f.metadata.get(PASSTHROUGH):
            for name, value in default.items():
                yield f"{prefix}{name}", json.dumps(value, default=str), "(passed through)"
            yield f"{prefix}<any other>", "", str(f.metadata.get("help", ""))
        else:
            yield key, json.dumps(default, default=str), str(f.metadata.get("help", ""))
