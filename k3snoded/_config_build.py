"""Turning the merged YAML tree into the typed, frozen ``Config`` dataclasses.

Private to ``k3snoded.config``. Driven by the dataclass field types, so a new field needs no
code here. Every wrong type or unknown key becomes a ``ConfigProblem`` naming the file that set
it; the field then keeps its default so the rest can still be checked.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from pathlib import Path
from typing import Any

from k3snoded._config_rules import did_you_mean
from k3snoded._config_yaml import Sources, describe
from k3snoded.errors import ConfigProblem

NOT_CONFIGURABLE = frozenset({"source"})  # fields filled by the loader, not by files


class Builder:
    """Builds one dataclass tree from ``sources.tree``, collecting problems."""

    def __init__(self, sources: Sources, main: str) -> None:
        self.sources = sources
        self.main = main
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(self.sources.file_of(key, self.main), key, reason))

    def build(self, cls: type[Any], data: Any, prefix: str = "") -> Any:
        """An instance of dataclass ``cls`` from mapping ``data`` (``None``: all defaults)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(prefix, f"must be a mapping of keys, not {describe(data)}")
            data = {}
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.name not in NOT_CONFIGURABLE]
        values: dict[str, Any] = {}
        for key, value in data.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in names:
                hint = did_you_mean(str(key), names)
                self.problem(dotted, f"unknown key{hint}")
                continue
            if value is None:
                continue  # an empty value means "unset": the default applies
            converted = self.convert(hints[key], value, dotted)
            if converted is not _INVALID and converted is not _UNSET:
                values[key] = converted
        return cls(**values)

    def convert(self, hint: Any, value: Any, key: str) -> Any:
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self.build(hint, value, key)
        if hint is bool:
            return value if isinstance(value, bool) else self._wrong(key, "true or false", value)
        if hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return self._wrong(key, "a whole number", value)
        if hint is float:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and math.isfinite(value):
                return float(value)
            return self._wrong(key, "a number of seconds", value)
        if hint is str:
            return value if isinstance(value, str) else self._wrong(key, "a string", value)
        if hint is Path or (_is_optional(hint) and Path in typing.get_args(hint)):
            return self._path(key, value)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            allowed = [member.value for member in hint]
            if isinstance(value, str) and value in allowed:
                return hint(value)
            shown = f"'{value}'" if isinstance(value, str) else describe(value)
            self.problem(key, f"must be one of {', '.join(allowed)}, not {shown}")
            return _INVALID
        if typing.get_origin(hint) is tuple:
            return self._strings(key, value)
        raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a code bug

    def _wrong(self, key: str, expected: str, value: Any) -> object:
        hint = ""
        if isinstance(value, bool) and "string" in expected:
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the value)"
        elif isinstance(value, int | float) and "string" in expected:
            hint = " (quote the value)"
        self.problem(key, f"must be {expected}, not {describe(value)}{hint}")
        return _INVALID

    def _path(self, key: str, value: Any) -> object:
        if not isinstance(value, str):
            return self._wrong(key, "a path (a string)", value)
        if value == "":
            return _UNSET  # like an empty value: the default applies
        if "\0" in value or not value.startswith("/"):
            self.problem(key, f"'{value}' must be an absolute path")
            return _INVALID
        return Path(value)

    def _strings(self, key: str, value: Any) -> object:
        if isinstance(value, str):
            self.problem(key, f"must be a list of strings; write it as a list: ['{value}']")
            return _INVALID
        if not isinstance(value, list):
            return self._wrong(key, "a list of strings", value)
        items: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                items.append(item)
            else:
                self._wrong(f"{key}[{index}]", "a string", item)
        return tuple(items) if len(items) == len(value) else _INVALID


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


_INVALID = object()
_UNSET = object()
