"""config.yaml + ``config.yaml.d`` drop-ins turned into arguments (pkg/configfilearg).

Each top-level key becomes ``--key=value`` (one per list item); later files override earlier
keys, ``key+`` appends; the generated arguments go right after the subcommand, before the real
CLI arguments, and keys the CLI also sets are dropped so CLI values win (slices included).
Keys that are not flags of the subcommand are skipped with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.flags import Args, Flag, index

DEFAULT_CONFIG = "/etc/rancher/k3s/config.yaml"
DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"


class ConfigError(Exception):
    """A config file that cannot be read or parsed (fatal)."""


def root() -> str:
    """The test root that stands in for ``/`` (``K3S_FAKE_ROOT``; empty = the real root)."""
    return os.environ.get("K3S_FAKE_ROOT", "").rstrip("/")


def rooted(path: str) -> str:
    """A fixed system path (``/etc/rancher/...``) moved under the test root."""
    return root() + path if root() else path


def find_config_flag(argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, bool]:
    """The config file path and whether it was given explicitly (env wins over the flag)."""
    if env.get("K3S_CONFIG_FILE"):
        return env["K3S_CONFIG_FILE"], True
    found = ""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        for prefix in ("--config", "-config", "-c", "--c"):
            if arg == prefix and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(prefix + "="):
                found = arg[len(prefix) + 1 :]
        i += 1
    if found:
        return found, True
    return rooted(DEFAULT_CONFIG), False


def _dropins(config: Path) -> list[Path]:
    d = Path(str(config) + ".d")
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".yaml", ".yml"))


def _stringify(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _load(path: Path) -> dict[str, object]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"failed to read config {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"failed to read config {path}: not a YAML mapping")
    return {str(k): v for k, v in data.items()}


def merged(config: str, explicit: bool) -> dict[str, list[str] | str]:
    """Merge the main file and its drop-ins into key → value (list or scalar)."""
    path = Path(config)
    files: list[Path] = []
    if path.is_file():
        files.append(path)
    elif explicit and not _dropins(path):
        raise ConfigError(f"stat {config}: no such file or directory")
    files.extend(_dropins(path))
    out: dict[str, list[str] | str] = {}
    for f in files:
        for raw_key, value in _load(f).items():
            append = raw_key.endswith("+")
            key = raw_key.rstrip("+")
            new: list[str] | str = (
                [_stringify(v) for v in value] if isinstance(value, list) else _stringify(value)
            )
            old = out.get(key)
            if append and old is not None:
                if isinstance(old, list) or isinstance(new, list):
                    old_l = old if isinstance(old, list) else [old]
                    new_l = new if isinstance(new, list) else [new]
                    out[key] = old_l + new_l
                else:
                    out[key] = f"{old},{new}"
            else:
                out[key] = new
    return out


def _cli_names(argv: Sequence[str], table: Mapping[str, Flag]) -> set[str]:
    names: set[str] = set()
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("-"):
            name = arg.lstrip("-").split("=", 1)[0]
            if name in table:
                names.add(table[name].name)
    return names


def config_args(argv: Sequence[str], flags: Sequence[Flag], env: Mapping[str, str]) -> list[str]:
    """Arguments generated from the config files, to insert before ``argv``."""
    config, explicit = find_config_flag(argv, env)
    values = merged(config, explicit)
    table = index(flags)
    on_cli = _cli_names(argv, table)
    out: list[str] = []
    for key, value in values.items():
        f = table.get(key)
        if f is None:
            logs.warning(f"Unknown flag --{key} found in config.yaml, skipping")
            continue
        if f.name in on_cli or f.name == "config":
            continue
        dash = "-" if len(key) == 1 else "--"
        items = value if isinstance(value, list) else [value]
        out.extend(f"{dash}{key}={item}" for item in items)
    return out


def data_dir(args: Args) -> str:
    """``--data-dir``; its default lives under the test root."""
    return args.get_str("data-dir") if args.is_set("data-dir") else rooted(DEFAULT_DATA_DIR)
