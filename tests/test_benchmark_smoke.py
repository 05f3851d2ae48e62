"""The benchmark's smallest size runs in the test suite, so benchmarks/run.py cannot rot.

Not a timed test: it checks that the command runs end to end (generate, apply, raw keygen
baseline, plans, state load/save) and prints the documented JSON document.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

ROW_KEYS = {
    "nodes": int,
    "resources": int,
    "plan_noop_s": float,
    "plan_replace_ca_s": float,
    "apply_s": float,
    "keygen_baseline_s": float,
    "apply_over_keygen": float,
    "state_bytes": int,
    "state_load_s": float,
    "state_load_plan_s": float,
    "state_save_s": float,
    "peak_rss_mib": float,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, workdir: Path) -> dict:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("bench-xdg"))
    # Two repetitions: the second apply must start from an empty cluster again.
    result = subprocess.run(
        [sys.executable, str(RUN), "--nodes", "10", "--repeat", "2", "--json",
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_repetitions_leave_nothing_behind(report: dict, workdir: Path) -> None:
    """Each repetition's state and files are moved aside (not deleted right before the next
    apply, see benchmarks/run.py `clean`) and removed when the run is over."""
    assert report["rows"][0]["repeat"]["apply"] == 2
    assert not (workdir / "spent").exists()
    cluster = workdir / "n10-rsa-2048"
    assert not (cluster / "state").exists() and not (cluster / "target").exists()


def test_document_shape(report: dict) -> None:
    assert {"machine", "rows", "deploy"} <= set(report)
    machine = report["machine"]
    for key in ("cores", "cpu_model", "python", "cryptography", "openssl"):
        assert machine[key], key
    assert report["deploy"] is None  # only with --lab
    assert [row["nodes"] for row in report["rows"]] == [10]


def test_row_values(report: dict) -> None:
    (row,) = report["rows"]
    for key, kind in ROW_KEYS.items():
        value = row[key]
        assert isinstance(value, kind) and not isinstance(value, bool), (key, value)
        if kind is float:
            assert math.isfinite(value) and value > 0, (key, value)
    # 3 control planes + 7 workers: 3 CAs, the sa key, 11 leaves per control plane,
    # super-admin, and a kubelet client cert per worker
    assert row["resources"] > 100
    assert row["keys"] == 3 + 1 + 3 * 11 + 1 + 7
    assert row["state_bytes"] > 0
    assert row["peak_rss_mib"] >= max(row["peak_rss_plan_mib"], row["peak_rss_apply_mib"]) > 0
    assert row["apply_over_keygen"] == pytest.approx(row["apply_s"] / row["keygen_baseline_s"])


def test_goals_are_judged(report: dict) -> None:
    goals = report["goals"]
    assert goals and all(g["met"] in (True, False) for g in goals)
    assert any(g["goal"].startswith("(3)") for g in goals)
