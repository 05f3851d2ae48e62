"""A computation in a forked child (`pkiform.offload`) and the proof baseline computed ahead.

The child may only make things faster: same result as in-process, None (the caller computes
itself) whenever forking is unsafe or the child fails, and no child left behind.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from pkiform import trust
from pkiform.offload import NO_FORK_ENV, Forked
from pkiform.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from generate import generate

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_computes_what_the_parent_would() -> None:
    job = Forked.start(lambda: {"pid": os.getpid(), "sum": sum(range(10_000))})
    assert job is not None
    result = job.result()
    assert result is not None
    assert result["sum"] == sum(range(10_000))
    assert result["pid"] != os.getpid()  # it really ran elsewhere
    with pytest.raises(RuntimeError):
        job.result()


def test_a_failing_child_gives_none() -> None:
    def boom() -> int:
        raise ValueError("no")

    job = Forked.start(boom)
    assert job is not None
    assert job.result() is None


def test_a_child_killed_midway_gives_none() -> None:
    job = Forked.start(lambda: os.kill(os.getpid(), 9))
    assert job is not None
    assert job.result() is None


def test_no_fork_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert Forked.start(lambda: 1) is None
    finally:
        release.set()
        thread.join()
    job = Forked.start(lambda: 1)
    assert job is not None and job.result() == 1


def test_no_fork_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NO_FORK_ENV, "1")
    assert Forked.start(lambda: 1) is None


def test_cancel_stops_the_child() -> None:
    import time

    job = Forked.start(lambda: time.sleep(60))
    assert job is not None
    pid = job._pid
    job.cancel()
    assert not _alive(pid)  # killed and reaped, not a zombie
    job.cancel()  # idempotent


# -- the proof's baseline computed ahead by the workspace ----------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("baseline-ahead")
    generate(directory, 6, key="ecdsa-p256")
    ws = Workspace(directory)
    assert not ws.apply(ws.plan(), keygen_workers=1).failed
    return directory


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    # The generated cluster is small; below the threshold the workspace would not fork.
    monkeypatch.setattr(Workspace, "BASELINE_AHEAD_MIN", 0)


@pytest.mark.usefixtures("ahead")
@pytest.mark.parametrize("replace", [[], ["ca.kubernetes"], ["ca.etcd"]])
def test_the_proof_with_the_baseline_ahead_is_the_proof(cluster: Path, replace: list[str]
                                                         ) -> None:
    ws = Workspace(cluster)
    plan = ws.plan(replace=replace, prove_ahead=True)
    assert ws._baseline is not None  # a child is computing it
    with_child = trust.prove_plan(ws, plan)
    assert ws._baseline is None
    in_process = trust.prove_plan(ws, plan)
    assert with_child == in_process
    assert with_child.ok and with_child.edges > 0


@pytest.mark.usefixtures("ahead")
def test_a_baseline_of_another_state_time_or_config_is_not_used(cluster: Path) -> None:
    ws = Workspace(cluster)
    plan = ws.plan(prove_ahead=True)
    assert ws.take_baseline(plan.at + timedelta(seconds=1)) is None  # another time: dropped
    assert ws._baseline is None

    plan = ws.plan(prove_ahead=True)
    ws.store.path.touch()  # the state file changed (mtime) after the child read it
    os.utime(ws.store.path, ns=(1, 1))
    assert ws.take_baseline(plan.at) is None

    # A baseline of another config object is not taken by an empty plan, and a plan with
    # changes also checks that the edge count fits.
    ws = Workspace(cluster)
    plan = ws.plan()
    state = ws.load_state()
    wrong = trust.Baseline(plan.at, 1, id(object()), (0,),
                           trust.ProofReport(1, 1, 1, (), plan.mode))
    right = trust.prove(plan, ws.config, state, ws.registry)
    assert right.edges > 1
    assert trust.prove(plan, ws.config, state, ws.registry, known=wrong) == right
    replaced = ws.plan(replace=["ca.etcd"], at=plan.at)
    state = ws.load_state(decrypt=True)
    wrong = attrs.evolve(wrong, config_id=id(ws.config))
    assert trust.prove(replaced, ws.config, state, ws.registry, known=wrong) == trust.prove(
        replaced, ws.config, state, ws.registry)


@pytest.mark.usefixtures("ahead")
def test_the_cli_plan_is_the_same_with_and_without_the_child(
        cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pkiform.cli import main

    outputs = []
    for no_fork in ("", "1"):
        monkeypatch.setenv(NO_FORK_ENV, no_fork)
        assert main(["--no-color", "-C", str(cluster), "plan", "--replace",
                     "ca.kubernetes"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "trust:" in outputs[0] and "edges verified" in outputs[0]
