"""Every CA and rotatable key of the hard-way and five-ca examples rotates without downtime.

Apply once per example, then for each CA/key: copy the applied directory, plan the rotation
(three phases, trust proof ok at every boundary), apply it, and check that no certificate on
any target still chains to the old CA, that the re-plan is empty and its proof passes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pkiform.pki.certs import describe_certificate, split_pem_bundle
from pkiform.trust import prove
from pkiform.workspace import Workspace
from tests.conftest import copy_example, run_cli

ROTATABLE = {
    "hard-way": ["ca.kubernetes", "secret.encryption-key"],
    "five-ca": ["ca.etcd-peer", "ca.etcd-server", "ca.cluster-signing", "ca.requestheader",
                "keypair.service-accounts"],
}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    result = {}
    for name in ROTATABLE:
        directory = copy_example(name, tmp_path_factory.mktemp(name))
        outcome = run_cli("-C", str(directory), "apply", "--auto-approve")
        assert outcome.code == 0, outcome.err
        result[name] = directory
    return result


def certificates_on_targets(ws: Workspace) -> list[tuple[Path, bytes]]:
    found = []
    for path in ws.target_root.rglob("*"):
        if path.is_file() and b"BEGIN CERTIFICATE" in path.read_bytes()[:4096] and \
                "pkiform-backup" not in path.name:
            found += [(path, cert) for cert in split_pem_bundle(path.read_bytes())]
    return found


@pytest.mark.parametrize(("example", "address"),
                         [(e, a) for e, addresses in ROTATABLE.items() for a in addresses])
def test_rotation(applied: dict[str, Path], tmp_path: Path, example: str, address: str) -> None:
    directory = tmp_path / example
    shutil.copytree(applied[example], directory)
    ws = Workspace(directory)
    before = ws.store.load(decrypt=False).get(address)
    assert before is not None
    old_ids = set()
    if address.startswith("ca."):
        old_ids = {describe_certificate(g["cert"].encode()).subject_key_id_hex
                   for g in before.outputs["generations"]}

    plan = ws.plan(replace=[address])
    assert [p.name for p in plan.phases] == ["trust-both", "reissue", "retire"]
    report = prove(plan, ws.config, ws.store.load(decrypt=True), ws.registry)
    assert report.ok, report.summary()
    result = ws.apply(plan)
    assert result.ok, result.failed

    after = Workspace(directory)
    follow_up = after.plan()
    assert follow_up.is_empty, [str(c.address) for c in follow_up.changes]
    final = prove(follow_up, after.config, after.store.load(decrypt=True), after.registry)
    assert final.ok, final.summary()
    generations = after.store.load(decrypt=False).get(address).outputs["generations"]  # type: ignore[union-attr]
    assert len(generations) == 1
    for path, cert in certificates_on_targets(after):
        info = describe_certificate(cert)
        assert info.subject_key_id_hex not in old_ids, f"{path} still holds the old CA"
        assert info.authority_key_id_hex not in old_ids, f"{path} is signed by the old CA"
