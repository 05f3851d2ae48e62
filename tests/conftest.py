"""Shared fixtures: an isolated key directory per test session, example copies, a CLI runner."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from pkiform.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@attrs.frozen
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True, scope="session")
def _isolated_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # State keys default to $XDG_CONFIG_HOME/pkiform/keys: never touch the real home in tests.
    previous = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    os.environ.pop("PKIFORM_STATE_KEY", None)
    os.environ.pop("PKIFORM_STATE_PASSPHRASE", None)
    yield
    if previous is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = previous


def copy_example(name: str, destination: Path) -> Path:
    target = destination / name
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("state", "target"))
    return target
