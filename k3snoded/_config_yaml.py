"""Reading the config files: YAML parsing, duplicate keys, drop-ins, merge with provenance.

Private to ``k3snoded.config``. ``read_sources(main)`` returns the merged tree (plain dicts,
lists and scalars), a map from every dotted key to the file that set it last, and the problems
found while reading. It never raises for anything a file can contain.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from k3snoded.errors import ConfigProblem

DROPIN_DIR = "config.d"
DROPIN_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1 << 20  # a config larger than 1 MiB is a mistake, not a config
MAX_VALUES = 100_000  # after alias expansion


@dataclass
class Sources:
    """The merged configuration tree and where each dotted key came from."""

    tree: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)

    def file_of(self, key: str, fallback: str) -> str:
        """The file that set ``key`` (or its nearest set parent), else ``fallback``."""
        while key:
            if key in self.origin:
                return self.origin[key]
            bracket = key.rfind("[") if key.endswith("]") else -1
            key = key[:bracket] if bracket > 0 else key.rpartition(".")[0]
        return fallback


def dropin_files(main: Path) -> tuple[list[Path], list[ConfigProblem]]:
    """``config.d/*.yaml`` and ``*.yml`` next to ``main``, in lexical order of their names.

    Hidden files (editor leftovers such as ``.x.yaml.swp`` or ``.#x.yaml``) are skipped.
    """
    directory = main.parent / DROPIN_DIR
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except NotADirectoryError:
        return [], [ConfigProblem(str(directory), "", "is not a directory")]
    except OSError as exc:
        return [], [ConfigProblem(str(directory), "", f"cannot list drop-ins: {exc.strerror}")]
    files = [
        directory / name
        for name in names
        if not name.startswith(".") and name.lower().endswith(DROPIN_SUFFIXES)
    ]
    return files, []


def read_sources(main: Path) -> Sources:
    """Read ``main`` and its drop-ins and deep-merge them (mappings merge, the rest replaces)."""
    sources = Sources()
    dropins, problems = dropin_files(main)
    sources.problems.extend(problems)
    for path in [main, *dropins]:
        sources.files.append(path)
        document, problems = load_yaml_file(path, required=path == main)
        sources.problems.extend(problems)
        if problems or document is None:
            continue
        if not isinstance(document, dict):
            reason = f"the top level must be a mapping of sections, not {describe(document)}"
            sources.problems.append(ConfigProblem(str(path), "", reason))
            continue
        merge(sources.tree, document, str(path), sources.origin, "")
    return sources


def load_yaml_file(path: Path, *, required: bool) -> tuple[Any, list[ConfigProblem]]:
    """One YAML document from ``path``; problems instead of exceptions."""
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "does not exist" if required else "vanished while reading"
        return None, [ConfigProblem(name, "", reason)]
    except OSError as exc:
        return None, [ConfigProblem(name, "", f"cannot access: {exc.strerror}")]
    if not stat.S_ISREG(st.st_mode):
        return None, [ConfigProblem(name, "", "is not a regular file")]
    if st.st_size > MAX_FILE_BYTES:
        return None, [ConfigProblem(name, "", f"is larger than {MAX_FILE_BYTES} bytes")]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [ConfigProblem(name, "", f"cannot read: {exc.strerror}")]
    return parse_yaml(raw, name)


def parse_yaml(raw: bytes, name: str) -> tuple[Any, list[ConfigProblem]]:
    """Parse one YAML document, rejecting duplicate keys (all of them, by dotted key)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [ConfigProblem(name, "", f"is not UTF-8 text (byte {exc.start})")]
    try:
        return _construct(text, name)
    except yaml.MarkedYAMLError as exc:
        return None, [ConfigProblem(name, "", f"is not valid YAML: {_yaml_reason(exc)}")]
    except yaml.YAMLError as exc:  # e.g. ReaderError: control characters
        return None, [ConfigProblem(name, "", f"is not valid YAML: {exc}")]
    except RecursionError:
        return None, [ConfigProblem(name, "", "is not valid YAML: nested too deeply")]
    except Exception as exc:  # the parser boundary: untrusted text must never give a traceback
        return None, [ConfigProblem(name, "", f"is not valid YAML: {exc}")]


def _construct(text: str, name: str) -> tuple[Any, list[ConfigProblem]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        if _expanded_size(node, {}) > MAX_VALUES:
            reason = f"expands to more than {MAX_VALUES} values (nested YAML aliases)"
            return None, [ConfigProblem(name, "", reason)]
        duplicates: list[ConfigProblem] = []
        _find_duplicates(node, "", name, duplicates, set())
        if duplicates:
            return None, duplicates
        return loader.construct_document(node), []
    finally:
        loader.dispose()


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = " ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
    if mark is not None:
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    return what


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` becomes once aliases are expanded (guards "billion laughs")."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_VALUES + 1  # a cycle counts as too large
    size = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, memo) + _expanded_size(value_node, memo)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    memo[id(node)] = min(size, MAX_VALUES + 1)
    return memo[id(node)]


def _find_duplicates(
    node: yaml.Node, prefix: str, name: str, out: list[ConfigProblem], seen: set[int]
) -> None:
    if id(node) in seen:  # aliases may share nodes; visit each once
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix and key is not None else (key or prefix)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first_line:
                    reason = (
                        f"duplicate key (line {line}; first set on line {first_line[key]}); "
                        "YAML keeps only one of them, remove the other"
                    )
                    out.append(ConfigProblem(name, dotted, reason))
                else:
                    first_line[key] = line
            _find_duplicates(value_node, dotted, name, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, f"{prefix}[{index}]", name, out, seen)


def merge(
    into: dict[str, Any], new: dict[Any, Any], file: str, origin: dict[str, str], prefix: str
) -> None:
    """Deep-merge ``new`` into ``into``, recording ``file`` as the origin of each key set.

    Mappings merge key by key; lists and scalars replace. An empty value (``key:``) unsets the
    key so it takes its default, except over a mapping: an empty section (e.g. one whose keys
    are all commented out) leaves the earlier section alone.
    """
    for raw_key, value in new.items():
        key = raw_key if isinstance(raw_key, str) else repr(raw_key)
        dotted = f"{prefix}.{key}" if prefix else key
        current = into.get(key)
        if value is None:
            if isinstance(current, dict):
                continue
            into.pop(key, None)
            _forget(origin, dotted)
            origin[dotted] = file  # an explicit unset is still "set here"
            continue
        if isinstance(value, dict) and isinstance(current, dict):
            origin[dotted] = file
            merge(current, value, file, origin, dotted)
            continue
        _forget(origin, dotted)
        origin[dotted] = file
        into[key] = _copy_recording(value, file, origin, dotted)


def _copy_recording(value: Any, file: str, origin: dict[str, str], dotted: str) -> Any:
    if isinstance(value, dict):
        copied: dict[str, Any] = {}
        merge(copied, value, file, origin, dotted)
        return copied
    return value


def _forget(origin: dict[str, str], dotted: str) -> None:
    below = dotted + "."
    for key in [k for k in origin if k.startswith(below)]:
        del origin[key]


def describe(value: Any) -> str:
    """A short English name of a YAML value's type, for error messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
