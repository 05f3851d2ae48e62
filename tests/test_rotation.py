"""CA and key rotations of the kubeadm example, carried out on the local target.

Checked with real verification: after every phase the files on the targets are read back, and
at the end every declared TLS edge must verify and no leaf anywhere may still be signed by
the old CA.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pkiform.errors import TransportError
from pkiform.pki.certs import describe_certificate, split_pem_bundle
from pkiform.provider import Action
from pkiform.trust import prove
from pkiform.workspace import Workspace
from tests.conftest import copy_example, run_cli

CONTROL = ("control-1", "control-2", "control-3")
PKI = "etc/kubernetes/pki"
CA_FILES = {"ca.kubernetes": f"{PKI}/ca.crt", "ca.front-proxy": f"{PKI}/front-proxy-ca.crt",
            "ca.etcd": f"{PKI}/etcd/ca.crt"}


@pytest.fixture
def cluster(tmp_path: Path) -> Workspace:
    directory = copy_example("kubeadm", tmp_path)
    # ECDSA keys (kubeadm supports them) keep these many applies fast; rotation logic does not
    # depend on the algorithm, and test_kubeadm_example covers the RSA default.
    config = directory / "pkiform.toml"
    config.write_text(config.read_text().replace(
        "[preset.kubeadm]", '[preset.kubeadm]\nkey = "ecdsa-p256"', 1))
    assert run_cli("-C", str(directory), "apply", "--auto-approve").code == 0
    return Workspace(directory)


def fingerprints(path: Path) -> list[str]:
    return [describe_certificate(c).fingerprint_sha256 for c in split_pem_bundle(path.read_bytes())]


def all_leaves(ws: Workspace) -> list[Path]:
    return [p for p in ws.target_root.rglob("*.crt") if "-ca" not in p.name and p.name != "ca.crt"]


@pytest.mark.parametrize("ca", sorted(CA_FILES))
def test_zero_downtime_ca_rotation(cluster: Workspace, ca: str) -> None:
    ws = cluster
    ca_file = ws.target_root / "control-1" / CA_FILES[ca]
    old = fingerprints(ca_file)
    assert len(old) == 1
    old_key_id = describe_certificate(ca_file.read_bytes()).subject_key_id_hex
    signed_before = [p for p in all_leaves(ws)
                     if describe_certificate(p.read_bytes()).authority_key_id_hex == old_key_id]
    assert signed_before
    plan = ws.plan(replace=[ca])
    assert [p.name for p in plan.phases] == ["trust-both", "reissue", "retire"]
    report = prove(plan, ws.config, ws.store.load(decrypt=True), ws.registry)
    assert report.ok and report.phases == 3, report.summary()

    seen: dict[str, list[str]] = {}

    def after_phase(phase: str, state: object) -> None:
        seen[phase] = fingerprints(ca_file)

    result = ws.apply(plan, on_phase_end=after_phase)
    assert result.ok, result.failed
    new = [f for f in seen["trust-both"] if f not in old]
    assert len(new) == 1
    assert seen["trust-both"] == old + new  # old still first: it still signs
    assert seen["reissue"] == new + old  # new first: it signs now, old still trusted
    assert seen["retire"] == new

    # No leaf anywhere is still signed by the old CA; every leaf it signed now chains to the
    # new one; and every declared edge verifies on the final state.
    for leaf in all_leaves(ws):
        assert describe_certificate(leaf.read_bytes()).authority_key_id_hex != old_key_id, leaf
    new_key_id = describe_certificate(ca_file.read_bytes()).subject_key_id_hex
    for leaf in signed_before:
        assert describe_certificate(leaf.read_bytes()).authority_key_id_hex == new_key_id
    after = Workspace(ws.directory)
    follow_up = after.plan()
    assert follow_up.is_empty, [str(c.address) for c in follow_up.changes]
    final = prove(follow_up, after.config, after.store.load(decrypt=True), after.registry)
    assert final.ok and final.edges > 0


def test_every_leaf_leaves_the_old_etcd_ca(cluster: Workspace) -> None:
    ws = cluster
    old_ca = describe_certificate((ws.target_root / "control-1" / CA_FILES["ca.etcd"]).read_bytes())
    signed_by_old = [p for p in all_leaves(ws) if describe_certificate(
        p.read_bytes()).authority_key_id_hex == old_ca.subject_key_id_hex]
    assert len(signed_by_old) == 3 * 4  # server, peer, healthcheck, apiserver-etcd-client
    ws.apply(ws.plan(replace=["ca.etcd"]))
    assert not [p for p in all_leaves(ws) if describe_certificate(
        p.read_bytes()).authority_key_id_hex == old_ca.subject_key_id_hex]


def test_kubeconfigs_carry_both_cas_during_cluster_ca_rotation(cluster: Workspace) -> None:
    ws = cluster
    import base64
    import re

    def ca_data(host: str) -> int:
        text = (ws.target_root / host / "etc/kubernetes/admin.conf").read_text()
        data = re.search(r"certificate-authority-data: (\S+)", text).group(1)  # type: ignore[union-attr]
        return len(split_pem_bundle(base64.b64decode(data)))

    counts: dict[str, int] = {}
    plan = ws.plan(replace=["ca.kubernetes"])
    # The controller-manager's signing pair is explained, handed-out kubeconfigs are listed.
    assert any("--cluster-signing-cert-file" in note for note in plan.notes)
    retire = next(p for p in plan.phases if p.name == "retire")
    assert any(note.startswith("kubeconfig.admin[control-1] changed") for note in retire.outside)
    ws.apply(plan,
             on_phase_end=lambda phase, state: counts.__setitem__(phase, ca_data("control-2")))
    assert counts == {"trust-both": 2, "reissue": 2, "retire": 1}


def test_service_account_key_rotation_publishes_both_public_keys(cluster: Workspace) -> None:
    ws = cluster
    pub = ws.target_root / "control-1" / PKI / "sa.pub"
    plan = ws.plan(replace=["keypair.sa"])
    phases = {p.name: p for p in plan.phases}
    assert set(phases) == {"trust-both", "reissue", "retire"}
    assert any("token" in note for note in phases["reissue"].outside)
    counts: dict[str, int] = {}
    ws.apply(plan, on_phase_end=lambda phase, state: counts.__setitem__(
        phase, pub.read_text().count("BEGIN PUBLIC KEY")))
    assert counts == {"trust-both": 2, "reissue": 2, "retire": 1}
    restarted = [str(c.address) for c in plan.changes if c.action is Action.RESTART
                 and c.phase == "trust-both"]
    assert restarted and all("kube-apiserver" in a or "controller-manager" in a
                             for a in restarted)


def test_immediate_rotation_lists_the_outage(cluster: Workspace) -> None:
    ws = cluster
    plan = ws.plan(replace=["ca.etcd"], mode="immediate")
    assert [p.name for p in plan.phases] == ["apply"]
    assert any("break" in note for note in plan.notes)
    report = prove(plan, ws.config, ws.store.load(decrypt=True), ws.registry)
    assert not report.ok
    assert {f.edge for f in report.failures} == {
        "etcd peer ↔ peer", "kube-apiserver → etcd", "etcd healthcheck → etcd"}


def test_interrupted_rotation_resumes_from_its_phase(cluster: Workspace) -> None:
    ws = cluster
    plan = ws.plan(replace=["ca.etcd"])
    original = ws.transport_factory

    class Flaky:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def write_file(self, path: str, content: bytes, **kw: object) -> None:
            if path.endswith("etcd/peer.crt") and self.inner.host.name == "control-2":  # type: ignore[attr-defined]
                raise TransportError("disk full (injected)", host="control-2")
            self.inner.write_file(path, content, **kw)  # type: ignore[attr-defined]

    ws.transport_factory = lambda host: Flaky(original(host))  # type: ignore[method-assign]
    result = ws.apply(plan)
    assert not result.ok
    assert {str(c.address) for c, _ in result.failed} == {"file.etcd-peer-crt[control-2]"}
    skipped = {str(c.address) for c, _ in result.skipped}
    assert "service.etcd[control-2]" in skipped
    assert any(c.phase == "retire" for c, _ in result.skipped)  # later phases never started

    ws.transport_factory = original  # type: ignore[method-assign]
    resumed = Workspace(ws.directory)
    again = resumed.plan()
    assert any("resuming" in note for note in again.notes)
    assert [p.name for p in again.phases] == ["reissue", "retire"]
    # The failed write and its restart finish in reissue; ca.etcd's own remaining step is
    # retire — no step is repeated.
    assert {str(c.address) for c in again.changes if c.phase == "reissue"} >= {
        "file.etcd-peer-crt[control-2]", "service.etcd[control-2]"}
    assert [c.step for c in again.changes if str(c.address) == "ca.etcd"] == ["retire-old"]
    assert resumed.apply(again).ok
    final = Workspace(ws.directory)
    assert final.plan().is_empty
    state = final.store.load(decrypt=False)
    assert len(state.get("ca.etcd").outputs["generations"]) == 1  # type: ignore[union-attr]


def test_expiry_renews_inside_the_window_only(cluster: Workspace) -> None:
    ws = cluster
    not_after = datetime.fromisoformat(ws.store.load(decrypt=False).get(
        "cert.apiserver[control-1]").outputs["not_after"].replace("Z", "+00:00"))  # type: ignore[union-attr]
    outside = ws.plan(at=not_after - timedelta(days=31))
    assert outside.is_empty
    inside = ws.plan(at=not_after - timedelta(days=29))
    renewed = {str(c.address): c for c in inside.changes}
    change = renewed["cert.apiserver[control-1]"]
    assert change.action is Action.UPDATE
    assert any(r.startswith(f"expires {not_after:%Y-%m-%d}, within 30 days")
               for r in change.reasons)
    # The cascade: its files are rewritten and the apiserver restarted.
    assert "file.apiserver-crt[control-1]" in renewed
    assert renewed["service.kube-apiserver[control-1]"].action is Action.RESTART
    # The CLI's --at is the same clock.
    cli = run_cli("-C", str(ws.directory), "plan", "--json", "--at",
                  (not_after - timedelta(days=29)).strftime("%Y-%m-%d"))
    assert '"cert.apiserver[control-1]"' in cli.out


def test_expiring_ca_is_rotated_in_phases(cluster: Workspace) -> None:
    ws = cluster
    ca_end = datetime.fromisoformat(ws.store.load(decrypt=False).get(
        "ca.etcd").outputs["not_after"].replace("Z", "+00:00"))  # type: ignore[union-attr]
    plan = ws.plan(at=ca_end - timedelta(days=10))
    assert [p.name for p in plan.phases] == ["trust-both", "reissue", "retire"]
    first = next(c for c in plan.changes if str(c.address) == "ca.etcd")
    assert first.phase == "trust-both" and "expires" in first.reasons[0]
    assert datetime.now(UTC) < ca_end
