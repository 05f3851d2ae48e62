"""Every config in tests/bad_configs/ fails `pkiform validate` with one clear message.

Layout (see tests/bad_configs/README.md): one directory per case holding ``pkiform.toml``
(and, when the error is in an extra file, ``x.pkiform.toml``), ``expect.txt`` with substrings
the error must contain (one per line) and, for a case that shows a known bug outside the
config loader, ``xfail.txt`` with the reason. ``_good/`` holds positive controls.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pkiform.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_configs"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MIN_CASES = 60


def _cases() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _params() -> list[object]:
    params = []
    for case in _cases():
        xfail = case / "xfail.txt"
        marks = (
            [pytest.mark.xfail(reason=xfail.read_text().strip(), strict=True)]
            if xfail.exists() else []
        )
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _validate(directory: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["-C", str(directory), "validate"], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # PKIFORM_DEBUG re-raises internal errors and PKIFORM_TIMING adds a line to stderr.
    monkeypatch.delenv("PKIFORM_DEBUG", raising=False)
    monkeypatch.delenv("PKIFORM_TIMING", raising=False)


def test_corpus_does_not_shrink() -> None:
    assert len(_cases()) >= MIN_CASES


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_case_is_well_formed(case: Path) -> None:
    assert (case / "pkiform.toml").is_file()
    expected = (case / "expect.txt").read_text().splitlines()
    assert [line for line in expected if line.strip()], "expect.txt lists no substring"
    assert {p.name for p in case.iterdir()} <= {
        "pkiform.toml", "x.pkiform.toml", "expect.txt", "xfail.txt"}


@pytest.mark.parametrize("case", _params())
def test_bad_config_fails_with_one_clear_error(case: Path) -> None:
    code, out, err = _validate(case)

    assert code == 1, f"exit {code}; stdout: {out!r}; stderr: {err!r}"
    assert out == ""
    assert err.startswith("Error: "), err
    assert err.count("Error: ") == 1, f"more than one message: {err!r}"
    assert "Traceback" not in err
    assert "internal error" not in err
    offending = case / ("x.pkiform.toml" if (case / "x.pkiform.toml").exists()
                        else "pkiform.toml")
    assert str(offending) in err, f"{offending} not named in {err!r}"
    for expected in filter(None, (case / "expect.txt").read_text().splitlines()):
        assert expected in err, f"{expected!r} not in {err!r}"
    hints = [line for line in err.splitlines() if line.startswith("  fix: ")]
    assert len(hints) == 1 and hints[0].removeprefix("  fix: ").strip(), err


@pytest.mark.parametrize(
    "directory",
    [*sorted((CORPUS / "_good").iterdir()), EXAMPLES / "kubeadm"],
    ids=lambda p: p.name,
)
def test_positive_controls_validate(directory: Path) -> None:
    code, out, err = _validate(directory)
    assert code == 0, err
    assert out.startswith("Success! The configuration is valid")
    assert err == ""
