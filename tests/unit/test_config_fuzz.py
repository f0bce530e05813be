"""Property: whatever the files contain, load_config returns a Config or raises ConfigError."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k3snoded.config import Config, load_config
from k3snoded.errors import ConfigError
from tests.unit.test_config_support import HOST, TOKEN

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "sqlite",
            "mysql://u:p@tcp(db:3306)/k3s",
            "mysql://u:p@db:3306/k3s",
            "postgres://",
            "https://a:1,b",
            "10.0.0.100",
            "fe80::1",
            "lb.example.com",
            "auto",
            "server",
            "agent",
            "/etc/hosts",
            "/",
            "relative",
            "a=b",
            "k=v:NoSchedule",
            "--token=x",
            "0.0.0.0:6480",
            "]",
            "[",
            "a.b[",
        ]
    ),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _guided(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings shaped like the schema (so validation runs deep), with wrong values mixed in."""
    hints = typing.get_type_hints(cls)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            optional[f.name] = _guided(hint) | ANY
        elif typing.get_origin(hint) is tuple:
            optional[f.name] = st.lists(SCALARS, max_size=3) | SCALARS
        else:
            optional[f.name] = SCALARS
    return st.fixed_dictionaries({}, optional=optional)


@pytest.fixture
def workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="k3snoded-fuzz-"))
    (root / "config.d").mkdir()
    token = root / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _load(root: Path) -> None:
    try:
        result = load_config(root / "config.yaml", host=HOST)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert isinstance(problem.file, str) and problem.file
            assert isinstance(problem.key, str) and isinstance(problem.reason, str)
        return
    assert isinstance(result, Config)


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_random_bytes(workdir: Path, raw: bytes) -> None:
    (workdir / "config.yaml").write_bytes(raw)
    _load(workdir)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("abc:{}[]-&*!|>'\"#%@ \n\t.0123")), max_size=120))
def test_random_yaml_like_text(workdir: Path, text: str) -> None:
    (workdir / "config.yaml").write_text(text)
    _load(workdir)


@SETTINGS
@given(main=_guided(Config), dropin=st.none() | _guided(Config) | ANY, with_token=st.booleans())
def test_schema_shaped_documents(
    workdir: Path, main: dict[str, Any], dropin: Any, with_token: bool
) -> None:
    if with_token:
        main.setdefault("cluster", {})
        if isinstance(main["cluster"], dict):
            main["cluster"]["token_file"] = str(workdir / "token")
    (workdir / "config.yaml").write_text(yaml.safe_dump(main))
    dropin_path = workdir / "config.d" / "10.yaml"
    if dropin is None:
        dropin_path.unlink(missing_ok=True)
    else:
        dropin_path.write_text(yaml.safe_dump(dropin))
    _load(workdir)
