"""Strict configuration: YAML with duplicate/unknown keys rejected, typed dataclass schemas,
one level of ``include:``, ``8/255`` fractions, and ``--set key=value`` overrides.

Every error names the file and key path and suggests a fix; it is a :class:`ConfigError`
(exit code 2).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError, suggest
from .ranges import check as check_range


# ----------------------------------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:  # duplicates among the keys written here (merge keys may be overridden)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        mark = key_node.start_mark
        try:
            dup = key in seen
        except TypeError:
            raise ConfigError(f"{mark.name}:{mark.line + 1}: unhashable mapping key {key!r}; keys must be scalars") from None
        if dup:
            raise ConfigError(f"{mark.name}:{mark.line + 1}: duplicate key '{key}'; keep one of the two definitions")
        seen.add(key)
    loader.flatten_mapping(node)  # merged keys first, then this mapping's own keys (which win)
    out: dict = {}
    for key_node, value_node in node.value:
        out[loader.construct_object(key_node, deep=deep)] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> dict:
    """Load a YAML mapping strictly (safe loader, no duplicate keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; check the path (relative to {Path.cwd()})")
    try:
        with path.open() as f:
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file ({e.reason} at byte {e.start}); give a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_with_include(path: str | Path) -> dict:
    """Load a spec that may start with ``include: other.yaml`` (one level): the included mapping is the
    base, the including file's keys are deep-merged on top. One implementation:
    :func:`natbench.taskspec.load_spec_dict` (next to the file first, then the built-in specs)."""
    from .taskspec import load_spec_dict

    data = load_spec_dict(Path(path))
    data.pop("_included", None)
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------------------- numbers
def parse_float(value: Any, where: str) -> float:
    """Accept ints, floats, numeric strings and fractions such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            out = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {value!r} is too large for a float") from None
    elif isinstance(value, str):
        try:
            out = float(Fraction(value.strip().replace(" ", "")))
        except (ValueError, ZeroDivisionError, OverflowError):
            raise ConfigError(f"{where}: expected a number or a fraction like 8/255, got {value!r}") from None
    else:
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return out


# ----------------------------------------------------------------------------------------- schemas
def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys and bad types are errors."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}'.{suggest(str(key), fields)} Allowed: {', '.join(fields) or '(none)'}"
            )
        kwargs[key] = coerce(hints[key], value, f"{where}.{key}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{name}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    for key, value in kwargs.items():  # natbench.ranges, after the class's own (more specific) checks
        check_range(cls, key, value, f"{where}.{key}")
    return obj


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check/convert ``value`` against the type annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {inner}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}.{suggest(str(value), map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        return parse_float(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a schema bug, not a user error


def to_dict(obj: Any) -> Any:
    """Dataclasses/tuples -> plain dicts/lists (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """Stable sha256 of a resolved config (canonical JSON)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- --set
def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[list[str], Any]]:
    """``["a.b=3", "nat.omega=8/255"]`` -> ``[(["a","b"], 3), (["nat","omega"], "8/255")]``.

    Values are read as YAML scalars (``3`` is an int, ``true`` a bool); the schema then validates them.
    """
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set training.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip().split("."), value))
    return out


def apply_path(data: dict, path: list[str], value: Any, where: str) -> None:
    """Set ``data[path[0]]...[path[-1]] = value`` where every key but the last must exist."""
    node = data
    for i, key in enumerate(path[:-1]):
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
            have = list(node) if isinstance(node, dict) else []
            raise ConfigError(
                f"--set {where}: unknown key '{'.'.join(path[: i + 1])}'.{suggest(key, have)} "
                f"Allowed here: {', '.join(map(str, have)) or '(none)'}"
            )
        node = node[key]
    leaf = path[-1]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {where}: '{'.'.join(path[:-1])}' is not a mapping")
    node[leaf] = value  # an unknown leaf is caught by the strict schema that re-reads `data`
