"""The apply report names each distinct error once: a host that went down fails every one
of its steps with the same words, which would otherwise repeat once per file."""

from __future__ import annotations

import io
from pathlib import Path

from pkiform.apply import ApplyResult
from pkiform.cli import Cli, ProgressHook, Style, build_parser
from pkiform.workspace import Workspace
from tests.conftest import copy_example

DOWN = ("worker-1: the connection to the host was lost\n"
        "  fix: check the host, then run pkiform apply again")


def test_identical_errors_are_reported_once_with_their_steps(tmp_path: Path) -> None:
    example = copy_example("kubeadm", tmp_path)
    ws = Workspace(example)
    plan = ws.plan()
    changes = [c for c in plan.changes if c.host == "worker-1"]
    other = next(c for c in plan.changes if c.host == "control-1")
    assert len(changes) >= 5
    failed = [(c, DOWN) for c in changes] + [(other, "control-1: disk full writing /x")]
    result = ApplyResult(done=(), failed=tuple(failed), skipped=(), state=ws.load_state(),
                         duration=1.0)
    out, err = io.StringIO(), io.StringIO()
    cli = Cli(build_parser().parse_args(["apply"]), out, err)
    assert cli._report(result, ProgressHook(out, Style(False), 0, False)) == 1
    lines = err.getvalue().splitlines()
    first = ", ".join(str(c.address) for c in changes[:3])
    assert lines[0] == f"Error: {first} and {len(changes) - 3} more: {DOWN.splitlines()[0]}"
    assert lines[1] == "  fix: check the host, then run pkiform apply again"
    assert lines[2] == f"Error: {other.address}: control-1: disk full writing /x"
    assert err.getvalue().count("connection to the host was lost") == 1
    assert f"{len(failed)} failed" in out.getvalue()
