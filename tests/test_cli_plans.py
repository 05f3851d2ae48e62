"""Saved plans are bound to their exact state; the CLI's exit codes and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_example, run_cli


@pytest.fixture
def example(tmp_path: Path) -> Path:
    return copy_example("kubeadm", tmp_path)


def test_saved_plan_applies_once_then_is_stale(example: Path) -> None:
    planfile = example / "first.plan"
    made = run_cli("-C", str(example), "plan", "--out", str(planfile), "--detailed-exitcode")
    assert made.code == 2, made.err
    assert "PRIVATE KEY" not in planfile.read_text()
    first = run_cli("-C", str(example), "apply", str(planfile))
    assert first.code == 0, first.err
    # hashicorp/terraform#24078: a plan made against an empty state must not apply twice.
    again = run_cli("-C", str(example), "apply", str(planfile))
    assert again.code == 1
    assert "made against another state" in again.err and "Traceback" not in again.err
    assert run_cli("-C", str(example), "plan", "--detailed-exitcode").code == 0


def test_tampered_plan_is_refused(example: Path) -> None:
    run_cli("-C", str(example), "apply", "--auto-approve")
    planfile = example / "rotate.plan"
    assert run_cli("-C", str(example), "plan", "--replace", "cert.apiserver[control-1]",
                   "--out", str(planfile)).code == 0
    document = json.loads(planfile.read_text())
    document["plan"] = document["plan"].replace("control-1", "control-2", 1)
    planfile.write_text(json.dumps(document))
    result = run_cli("-C", str(example), "apply", str(planfile))
    assert result.code == 1 and "failed authentication" in result.err


def test_plan_is_stale_after_any_state_change(example: Path) -> None:
    run_cli("-C", str(example), "apply", "--auto-approve")
    planfile = example / "p.plan"
    run_cli("-C", str(example), "plan", "--replace", "ca.front-proxy", "--out", str(planfile))
    assert run_cli("-C", str(example), "apply", "--auto-approve", "--replace",
                   "cert.scheduler[control-1]").code == 0
    result = run_cli("-C", str(example), "apply", str(planfile))
    assert result.code == 1 and "another state" in result.err


def test_detailed_exitcode_and_errors(example: Path, tmp_path: Path) -> None:
    assert run_cli("-C", str(example), "plan", "--detailed-exitcode").code == 2
    assert run_cli("-C", str(example), "plan").code == 0
    missing = run_cli("-C", str(tmp_path / "nowhere"), "plan", "--detailed-exitcode")
    assert missing.code == 1 and "pkiform.toml" in missing.err and "fix:" in missing.err
    bad = run_cli("-C", str(example), "plan", "--replace", "cert.nope")
    assert bad.code == 1 and "cert.nope" in bad.err


def test_apply_without_tty_needs_auto_approve(example: Path) -> None:
    result = run_cli("-C", str(example), "apply")
    assert result.code == 1 and "--auto-approve" in result.err


def test_state_commands_never_show_secrets(example: Path) -> None:
    run_cli("-C", str(example), "apply", "--auto-approve")
    listing = run_cli("-C", str(example), "state", "list")
    assert "cert.apiserver[control-1]" in listing.out.splitlines()
    shown = run_cli("-C", str(example), "state", "show", "cert.apiserver[control-1]")
    assert shown.code == 0
    assert "BEGIN CERTIFICATE" in shown.out and "PRIVATE KEY" not in shown.out
    assert "secret.key = (sensitive" in shown.out
    kubeconfig = run_cli("-C", str(example), "state", "show", "kubeconfig.admin[control-1]")
    assert "client_key" in kubeconfig.out and "PRIVATE KEY" not in kubeconfig.out


def test_graph_is_dot_with_every_edge(example: Path) -> None:
    result = run_cli("-C", str(example), "graph")
    assert result.out.startswith("digraph pkiform {")
    assert '"ca.etcd" -> "cert.etcd-peer[control-1]";' in result.out
    assert '"file.etcd-peer-crt[control-1]" -> "service.etcd[control-1]";' in result.out


def test_removed_resource_plans_its_delete_with_the_remote_file(example: Path) -> None:
    run_cli("-C", str(example), "apply", "--auto-approve")
    config = example / "pkiform.toml"
    config.write_text(config.read_text() + "".join(
        f"\n[{address}]\nenabled = false\n"
        for address in ("service.kube-scheduler", "file.scheduler-conf", "kubeconfig.scheduler",
                        "cert.scheduler")))
    result = run_cli("-C", str(example), "plan")
    assert result.code == 0, result.err
    assert "remove /etc/kubernetes/scheduler.conf on control-2" in result.out
    assert "Plan: 0 to create, 0 to update, 0 to replace, 12 to delete." in result.out
    applied = run_cli("-C", str(example), "apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert not (example / "target/control-2/etc/kubernetes/scheduler.conf").exists()
    assert run_cli("-C", str(example), "plan", "--detailed-exitcode").code == 0


def test_second_apply_fails_fast_naming_the_holder_or_waits(example: Path) -> None:
    import threading

    from pkiform.workspace import Workspace

    store = Workspace(example).store
    with store.lock("apply") as holder:
        blocked = run_cli("-C", str(example), "apply", "--auto-approve")
        assert blocked.code == 1
        assert holder.id in blocked.err and "force-unlock" in blocked.err
        assert not (example / "target").exists()  # nothing was touched
    release = threading.Event()

    def hold() -> None:
        with store.lock("apply"):
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        threading.Timer(0.5, release.set).start()
        waited = run_cli("-C", str(example), "apply", "--auto-approve", "--lock-timeout", "20s")
    finally:
        thread.join()
    assert waited.code == 0, waited.err


def test_expiry_table_and_json(example: Path) -> None:
    run_cli("-C", str(example), "apply", "--auto-approve")
    table = run_cli("-C", str(example), "expiry")
    lines = table.out.splitlines()
    assert lines[0].split() == ["RESOURCE", "EXPIRES", "RESIDUAL", "TIME", "SIGNER", "HOSTS"]
    assert any(line.startswith("cert.apiserver[control-1]") and "ca.kubernetes" in line
               and "control-1" in line for line in lines)
    assert any(line.startswith("ca.etcd") and "(self-signed)" in line for line in lines)
    rows = json.loads(run_cli("-C", str(example), "expiry", "--json").out)
    by_address = {row["address"]: row for row in rows}
    assert by_address["cert.apiserver[control-1]"]["residual_days"] in (364, 365)
    assert by_address["cert.kubelet[worker-2]"]["hosts"] == ["worker-2"]
    later = json.loads(run_cli("-C", str(example), "expiry", "--json", "--at",
                               "2027-11-10").out)
    assert {row["address"]: row for row in later}["cert.apiserver[control-1]"]["due"] is True
