"""Reading JSON and YAML input with one rule the parsers do not keep: a key appears once in an object.

Python's ``json`` and PyYAML both keep the last of two equal keys without a word, so a spec with ``devices: 4``
and, further down, ``devices: 1`` ran on one device; over HTTP the same. Input that users write (job specs,
workload files, API bodies) is read through here, and a repeated key is an error that names it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml


class DuplicateKey(ValueError):
    """An object (mapping) names the same key twice."""

    def __init__(self, key: object) -> None:
        super().__init__(f"{key!r} is given twice in one object (only the last one would count)")
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses a repeated key (DuplicateKey, a ValueError like every JSON error)."""
    return json.loads(text, object_pairs_hook=_pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"{key!r} is given twice in one mapping (only the last one would count)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a repeated key (a yaml.YAMLError naming it and where)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def number_as_text_hint(value: Any) -> str:
    """For an error about a value that should have been a number: why a YAML file gave text instead. YAML 1.1
    (PyYAML) reads ``1e-3`` and ``1e308`` as strings (a float needs a '.'), and "Expected float, got str" left the
    user guessing."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    m = re.fullmatch(r"([+-]?[0-9]+)(\.[0-9]*)?[eE]([+-]?)([0-9]+)", value.strip())
    if m:  # YAML 1.1 reads an exponent as a number only after a '.' and with a sign: 1.0e+5 (1.0e5 is text too)
        fixed = f"{m[1]}{m[2] or '.0'}e{m[3] or '+'}{m[4]}"
        if fixed != value.strip():
            return (f" ({value!r} was read as text: YAML reads a number with an exponent only with a '.' and a "
                    f"signed exponent; write {fixed})")
    return f" ({value!r} is text: write the number without quotes)"


def value_at(raw: Any, path: str) -> Any:
    """The value at a msgspec error path (``$.trainer.lr``; ``$`` is ``raw``), or None where it cannot be followed."""
    value = raw
    for part in path.removeprefix("$").split(".")[1:] if path.startswith("$") else []:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def shown(value: Any, limit: int = 80) -> str:
    """A value read from JSON (or YAML) as an error shows it: as JSON writes it (``true``, ``null``, ``"x"``), not as
    Python does (``True``, ``None``, ``'x'``), cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
