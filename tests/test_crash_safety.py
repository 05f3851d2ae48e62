"""Crash safety: apply SIGKILLed at a random step (hypothesis picks it) never loses a key.

For each kill point: the state on disk is never torn (it loads, journal included), every
certificate already deployed on a target has its private key in the state, and the next
apply converges to the same end state as an uninterrupted run — judged by `openssl verify` of
every deployed certificate against its CA file and a key/cert match of every pair.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkiform.pki.certs import certificate_matches_key, describe_certificate, split_pem_bundle
from pkiform.state.store import StateStore
from tests.conftest import ROOT, run_cli

CONFIG = """
[preset.kubeadm]
key = "ecdsa-p256"
control_plane_endpoint = "10.0.0.11:6443"

[hosts.control-1]
address = "10.0.0.11"
groups = ["control-plane"]

[hosts.worker-1]
address = "10.0.0.21"
groups = ["worker"]
"""
MODES = ["journal-before", "journal-mid", "journal-after", "write-mid", "commit"]
STEPS = 58  # resources in CONFIG (pkiform validate): every step is a possible kill point


def make_cluster(root: Path) -> Path:
    directory = root / "cluster"
    directory.mkdir()
    (directory / "pkiform.toml").write_text(CONFIG)
    return directory


def run_killable(directory: Path, mode: str, k: int, env: dict[str, str]) -> int:
    log = directory.parent / "runner.log"
    with open(log, "wb") as err:
        # A file, not a pipe: waiting for a pipe's EOF would also wait for any straggler.
        process = subprocess.Popen([sys.executable, "-m", "tests.crash.runner", str(directory),
                                    mode, str(k)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
        try:
            process.wait(timeout=60)
        finally:
            # Anything of the killed apply still alive (it must not be) goes with its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode in (0, -signal.SIGKILL), log.read_text()[-2000:]
    return process.returncode


def deployed(directory: Path) -> dict[str, bytes]:
    target = directory / "target"
    return {p.relative_to(target).as_posix(): p.read_bytes()
            for p in target.rglob("*") if p.is_file() and "pkiform-" not in p.name} \
        if target.exists() else {}


def check_keys_of_deployed_certs(directory: Path) -> None:
    """Every certificate on a target is one the state holds the private key of."""
    state = StateStore(directory / "state").load(decrypt=True)
    known: dict[str, bool] = {}
    for address, record in state.resources.items():
        secrets = state.secrets_of(address)
        if record.kind == "cert":
            known[record.outputs["cert"]] = "key" in secrets
        if record.kind == "ca":
            for index, generation in enumerate(record.outputs["generations"]):
                known[generation["cert"]] = f"key.{index}" in secrets
    for name, content in deployed(directory).items():
        if name.endswith(".crt"):
            for cert in split_pem_bundle(content):
                assert known.get(cert.decode()), f"{name}: its key is not in the state"


def check_converged(directory: Path) -> None:
    files = deployed(directory)
    for name, content in files.items():
        if name.endswith(".key") and name.replace(".key", ".crt") in files and "ca" not in \
                name.rsplit("/", 1)[-1]:
            cert = files[name.replace(".key", ".crt")]
            assert certificate_matches_key(cert, content), name
    pki = directory / "target/control-1/etc/kubernetes/pki"
    for leaf, ca in (("apiserver.crt", "ca.crt"), ("etcd/peer.crt", "etcd/ca.crt"),
                     ("front-proxy-client.crt", "front-proxy-ca.crt")):
        result = subprocess.run(["openssl", "verify", "-CAfile", str(pki / ca), str(pki / leaf)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    assert describe_certificate((pki / "apiserver.crt").read_bytes()).subject_common_name == \
        "kube-apiserver"


@settings(max_examples=int(os.environ.get("PKIFORM_CRASH_EXAMPLES", "20")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), k=st.integers(min_value=1, max_value=STEPS))
def test_apply_killed_anywhere_converges(mode: str, k: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "XDG_CONFIG_HOME": str(root / "xdg")}
        directory = make_cluster(root)
        code = run_killable(directory, mode, k, env)
        killed = code == -signal.SIGKILL
        if mode == "commit":
            assert killed  # the final save always happens
        if killed:
            # The state on disk is old or new, never torn; the journal replays.
            if (directory / "state").exists():
                check_keys_of_deployed_certs_env(directory, env)
        old_env = dict(os.environ)
        os.environ.update(env)
        try:
            finish = run_cli("-C", str(directory), "apply", "--auto-approve")
            assert finish.code == 0, finish.err
            again = run_cli("-C", str(directory), "plan", "--detailed-exitcode")
            assert again.code == 0, again.out + again.err
            check_converged(directory)
            reference = make_reference(root)
            assert sorted(deployed(directory)) == sorted(deployed(reference))
            state = StateStore(directory / "state").load(decrypt=False)
            assert sorted(state.resources) == sorted(
                StateStore(reference / "state").load(decrypt=False).resources)
        finally:
            os.environ.clear()
            os.environ.update(old_env)


def check_keys_of_deployed_certs_env(directory: Path, env: dict[str, str]) -> None:
    old_env = dict(os.environ)
    os.environ.update(env)
    try:
        check_keys_of_deployed_certs(directory)
    finally:
        os.environ.clear()
        os.environ.update(old_env)


def make_reference(root: Path) -> Path:
    reference = root / "reference"
    if not reference.exists():
        reference.mkdir()
        (reference / "pkiform.toml").write_text(CONFIG)
        assert run_cli("-C", str(reference), "apply", "--auto-approve").code == 0
    return reference


def test_kill_points_cover_every_step() -> None:
    # STEPS must match the config, or hypothesis would never kill at the last steps.
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_cluster(Path(tmp))
        result = run_cli("-C", str(directory), "validate")
        assert f"({STEPS} resources," in result.out
        shutil.rmtree(directory)
