"""The transport protocol: the only way the engine reads or changes a host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from pkiform.model import Host

# How long a restarted unit must stay up (the same invocation) when nothing else proves it
# came up: no health check and no settle_seconds of its own. A configured health check is the
# gate instead (Kubernetes' readiness probe with minReadySeconds 0, kubeadm's and kubespray's
# wait-for-healthy between members): the unit must pass it and still be the invocation that
# became active; settle_seconds then adds a window after it (minReadySeconds). Here, not in the
# SSH transport, because the apply's scheduler also uses it (through the service provider) to
# know how long a restart takes.
SETTLE_SECONDS = 1.0


def settle_window(settle: float | None, has_health_check: bool) -> float:
    """Seconds a restarted unit must stay up after it became active (after its health check
    passed, when it has one): ``settle`` if the service sets it, else SETTLE_SECONDS for a
    unit without a health check, else 0."""
    if settle is not None:
        return settle
    return 0.0 if has_health_check else SETTLE_SECONDS


@attrs.frozen
class FileStat:
    sha256: str
    mode: int
    owner: str
    group: str
    is_symlink: bool = False


@attrs.frozen
class HealthCheck:
    command: str | None = None  # run on the host; exit 0 = healthy
    url: str | None = None  # https URL probed from the host (curl) or directly
    timeout: float = 60.0


@attrs.frozen
class RestartOutcome:
    performed: bool  # False when the target has no service manager (local)
    detail: str  # "skipped, local target", "restarted, active after 1.2s"


class Transport(Protocol):
    """A transport may also have ``max_concurrent_steps`` (int): the most steps of its host
    the apply runs at once (the SSH transport: twice its sessions). Without it, no limit.
    And ``inline_steps`` (bool, default False): its operations are short local work that
    waits on no remote peer (the local transport), so the apply runs its host's steps in its
    own thread rather than on worker threads."""

    host: Host

    def read_files(self, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        """Stat and hash many files in one round trip; None for a missing file."""
        ...

    def write_file(
        self, path: str, content: bytes, *, mode: int, owner: str | None, group: str | None,
        backup: bool = True,
    ) -> None:
        """Atomically replace ``path`` (temp file in the same directory, fsync, rename).

        With ``backup`` the replaced file is kept as ``<path>.pkiform-backup``; without it any
        old backup is removed (private keys).
        """
        ...

    def remove_file(self, path: str) -> bool:
        """Remove ``path``; False when it was already gone."""
        ...

    def restart_service(
        self, unit: str, *, reload: bool, health: HealthCheck | None, timeout: float,
        settle: float | None = None,
    ) -> RestartOutcome:
        """Restart (or reload) ``unit`` and wait until it is active, has passed ``health`` and
        stayed up for ``settle_window(settle, health is not None)`` seconds."""
        ...

    def serving_certificate(self, endpoint: str) -> bytes | None:
        """The PEM certificate a TLS endpoint ("host:port") presents, or None if unreachable."""
        ...

    def close(self) -> None: ...
