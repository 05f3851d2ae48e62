"""The `pkiform` command as a process: `cli.entry` exits with os._exit after main, so what
it printed must still arrive whole, with main's exit code, through a pipe and a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import copy_example


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1")
    env.pop("PYTHONUNBUFFERED", None)  # buffered output, as users get: it must be flushed
    return env


def _pkiform(directory: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = _env()
    return subprocess.run([sys.executable, "-m", "pkiform", "--no-color", "-C", str(directory),
                           *args], env=env, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload]


def test_output_arrives_whole_and_exit_code_is_mains(tmp_path: Path) -> None:
    work = copy_example("kubeadm", tmp_path)
    planned = _pkiform(work, "plan", "--detailed-exitcode", capture_output=True)
    assert planned.returncode == 2, planned.stderr
    # The last line is written last: a lost buffer would cut the summary off.
    assert planned.stdout.rstrip().splitlines()[-1].startswith(("Plan:", "trust:")), \
        planned.stdout[-500:]
    assert "Plan: 142 to create, 0 to update, 0 to replace, 0 to delete, 18 to restart." \
        in planned.stdout

    log = tmp_path / "apply.log"
    with log.open("w") as handle:
        applied = _pkiform(work, "apply", "--auto-approve", stdout=handle,
                           stderr=subprocess.STDOUT)
    assert applied.returncode == 0, log.read_text()[-2000:]
    assert log.read_text().rstrip().splitlines()[-1].startswith("Apply complete!")

    again = _pkiform(work, "plan", "--detailed-exitcode", capture_output=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert "No changes." in again.stdout


def test_errors_exit_1_with_their_message(tmp_path: Path) -> None:
    (tmp_path / "pkiform.toml").write_text("[resources\n")
    result = _pkiform(tmp_path, "validate", capture_output=True)
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "pkiform.toml" in result.stderr


def test_a_closed_pipe_is_not_an_error_report(tmp_path: Path) -> None:
    work = copy_example("kubeadm", tmp_path)
    # `pkiform plan | head -1`: the reader goes away; no traceback about the flush.
    env = _env()
    pipeline = subprocess.run(
        f"{sys.executable} -m pkiform --no-color -C {work} plan | head -1",
        shell=True, env=env, text=True, capture_output=True, timeout=120, check=False)
    assert pipeline.stdout.count("\n") == 1
    assert "Traceback" not in pipeline.stderr
