"""The application layer: one config directory with its state, transports and providers.

This is where the pure engine meets concrete things — the built-in providers, the presets,
the local and SSH transports — so that neither the CLI nor tests have to wire them by hand.
The engine modules (graph, plan, apply, state, provider) never import this module.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pkiform.address import Address
from pkiform.apply import Applier, ApplyResult, Hook, KeySource, check_plan_current
from pkiform.config import load_config
from pkiform.errors import ConfigError, PkiformError, TransportError
from pkiform.model import Config, Host
from pkiform.plan import Plan, make_plan
from pkiform.provider import Observation, Registry
from pkiform.state.model import State
from pkiform.state.store import StateStore
from pkiform.transport.base import FileStat

_registry: Registry | None = None


def default_registry() -> Registry:
    global _registry
    if _registry is None:
        from pkiform.providers import builtin_providers

        _registry = Registry.with_entry_points(builtin_providers)
    return _registry


def default_presets() -> dict[str, Any]:
    from pkiform.presets import builtin_presets

    return builtin_presets()


def unreachable(errors: Mapping[str, BaseException]) -> BaseException:
    """One error for the hosts a refresh could not read: the host's own error when only one
    failed (or one failed with something that is not pkiform's), else a TransportError
    listing every host, in host order, with its reason and the distinct fixes."""
    names = sorted(errors)
    odd = [name for name in names if not isinstance(errors[name], PkiformError)]
    if len(names) == 1 or odd:
        return errors[odd[0] if odd else names[0]]
    reasons = [cast(PkiformError, errors[name]) for name in names]
    lines = [f"  {reason.message}" for reason in reasons]
    hints = list(dict.fromkeys(reason.hint for reason in reasons if reason.hint))
    return TransportError(
        f"cannot read {len(names)} hosts ({', '.join(names)}):\n" + "\n".join(lines),
        hint="; ".join(hints) or "check the hosts, then plan again")


class Workspace:
    def __init__(self, directory: str | os.PathLike[str], *,
                 registry: Registry | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.registry = registry or default_registry()
        self.config: Config = load_config(self.directory, self.registry, default_presets())
        settings = self.config.settings
        try:
            key_file = Path(settings.key_file).expanduser() if settings.key_file else None
        except RuntimeError:
            raise ConfigError(f"key_file {settings.key_file!r}: unknown home directory",
                              file=self.config.path, address="settings",
                              hint="write an absolute path") from None
        if key_file is not None and not key_file.is_absolute():
            key_file = self.directory / key_file
        self.store = StateStore(self.directory / settings.state_dir, key_file)
        self.target_root = self.directory / settings.target_root
        self._transports: dict[str, Any] = {}
        self._states: dict[bool, tuple[tuple[Any, ...], State]] = {}
        self._baseline: tuple[tuple[Any, ...], datetime, Any] | None = None

    # -- transports -------------------------------------------------------------------

    def transport_factory(self, host: Host) -> Any:
        """One transport (one SSH connection) per host for the whole run: plan and apply."""
        cached = self._transports.get(host.name)
        if cached is None:
            cached = self._transports[host.name] = self._new_transport(host)
        return cached

    def close(self) -> None:
        self.cancel_baseline()
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    def _new_transport(self, host: Host) -> Any:
        if host.transport == "local":
            from pkiform.transport.local import LocalTransport

            return LocalTransport(host, self.target_root)
        if host.transport == "ssh":
            from pkiform.transport.ssh import SshTransport

            return SshTransport(host, base_dir=self.directory)
        raise TransportError(f"unknown transport {host.transport!r}", host=host.name)

    def refresh(self, state: State, hosts: Iterable[str] | None = None
                ) -> dict[Address, Observation]:
        """Read every managed file's hash, mode and owner (drift detection), and ask services
        that name a TLS endpoint which certificate they serve.

        One round trip per host for the files; the hosts are read in parallel (up to
        ``parallelism`` at a time: SSH is I/O bound, and each host's connection is opened by
        its own thread and kept for the apply). The local target is read in this thread.
        """
        selected = None if hosts is None else set(hosts)
        # State keys are addresses' text; those of the config are made already.
        declared = {str(address): address for address in self.config.resources}
        files_of: dict[str, list[tuple[Address, str]]] = defaultdict(list)
        for address_text, record in state.resources.items():
            if record.kind == "file" and record.outputs.get("host"):
                files_of[record.outputs["host"]].append(
                    (declared.get(address_text) or Address.parse(address_text),
                     record.outputs["path"]))
        endpoints: list[tuple[Address, str, str, Any]] = []  # (service, host, endpoint, cert)
        for address_text, record in state.resources.items():
            if record.kind != "service" or not record.outputs.get("serving_fingerprint"):
                continue
            address = Address.parse(address_text)
            spec = self.config.resources.get(address)
            host_name = record.outputs.get("host", "")
            if spec is None or host_name not in self.config.hosts or not spec.get("tls_endpoint"):
                continue
            endpoints.append((address, host_name, spec["tls_endpoint"], spec["serving_cert"]))
        names = sorted(name for name in {*files_of, *(e[1] for e in endpoints)}
                       if name in self.config.hosts and (selected is None or name in selected))

        def read(name: str) -> tuple[Mapping[str, FileStat | None], dict[str, bytes | None]]:
            transport = self.transport_factory(self.config.hosts[name])
            files = files_of.get(name)
            stats = transport.read_files([path for _, path in files]) if files else {}
            served = {endpoint: transport.serving_certificate(endpoint)
                      for _, host_name, endpoint, _ in endpoints if host_name == name}
            return stats, served

        results: dict[str, tuple[Mapping[str, FileStat | None], dict[str, bytes | None]]] = {}
        errors: dict[str, BaseException] = {}
        remote = [n for n in names if self.config.hosts[n].transport != "local"]
        workers = min(len(remote), max(1, self.config.settings.parallelism))
        with contextlib.ExitStack() as stack:
            futures: dict[str, cf.Future[Any]] = {}
            if workers > 1:
                pool = stack.enter_context(
                    cf.ThreadPoolExecutor(workers, thread_name_prefix="pkiform-refresh"))
                futures = {name: pool.submit(read, name) for name in remote}
            for name in names:
                try:
                    results[name] = futures[name].result() if name in futures else read(name)
                except Exception as exc:
                    errors[name] = exc
        if errors:  # all hosts were tried: say which failed, each with its reason
            raise unreachable(errors)

        observations: dict[Address, Observation] = {}
        for name in names:
            stats = results[name][0]
            owners = self.config.hosts[name].transport != "local"  # local does not chown
            for address, path in files_of.get(name, ()):
                stat = stats.get(path)
                if stat is None or stat.is_symlink:
                    observations[address] = Observation(
                        is_symlink=stat is not None and stat.is_symlink)
                    continue
                observations[address] = Observation(
                    content_sha256=stat.sha256, mode=stat.mode,
                    owner=stat.owner if owners else None, group=stat.group if owners else None)
        # Services that name their TLS endpoint: what is the process actually serving?
        for address, host_name, endpoint, serving_cert in endpoints:
            if host_name not in results:
                continue
            pem = results[host_name][1].get(endpoint)
            cert = state.get(str(serving_cert))
            if pem is not None and cert is not None:
                from pkiform.pki.certs import describe_certificate

                observations[address] = Observation(
                    serving_fingerprint=describe_certificate(pem).fingerprint_sha256,
                    expected_fingerprint=cert.outputs.get("fingerprint"))
        return observations

    # -- plan / apply -------------------------------------------------------------------

    def load_state(self, *, decrypt: bool = False) -> State:
        """The state, read once per run: plan and its proof share one load.

        Reused only while the state and journal files are exactly the ones read (same
        inode, size and mtime: every save is a rename, every journal line grows the file).
        A decrypted load also serves a request without decryption.
        """
        stamp = self._state_stamp()
        for decrypted in (True, False) if not decrypt else (True,):
            cached = self._states.get(decrypted)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        plain = self._states.get(False)
        if decrypt and plain is not None and plain[0] == stamp:
            # The same file, read without its secrets: decrypt them, do not parse it again.
            state = self.store.with_secrets(plain[1])
        else:
            state = self.store.load(decrypt=decrypt)
        if self._state_stamp() == stamp:
            self._states[decrypt] = (stamp, state)
        return state

    def _state_stamp(self) -> tuple[Any, ...]:
        stamp: list[Any] = []
        for path in (self.store.path, self.store.journal_path):
            try:
                info = path.stat()
            except FileNotFoundError:
                stamp.append(None)
            else:
                stamp.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamp)

    def plan(
        self,
        *,
        replace: Sequence[str] = (),
        mode: str | None = None,
        at: datetime | None = None,
        refresh: bool = True,
        prove_ahead: bool = False,
    ) -> Plan:
        """``prove_ahead``: the caller will prove the plan (`trust.prove_plan`); its baseline
        is computed meanwhile, in a child process where possible."""
        now = at or datetime.now(UTC)
        if prove_ahead:
            self._start_baseline(now)
        state = self.load_state(decrypt=False)
        state_hash = self.store.content_hash()
        observations = self.refresh(state) if refresh else {}
        return make_plan(
            self.config, state, self.registry,
            replace=replace,
            mode=mode or self.config.settings.rotation,
            now=now,
            observations=observations,
            state_hash=state_hash,
        )

    # Below this many resources a child process costs more than the baseline it computes.
    BASELINE_AHEAD_MIN = 1000

    def _start_baseline(self, at: datetime) -> None:
        self.cancel_baseline()
        if len(self.config.resources) < self.BASELINE_AHEAD_MIN or not self.config.tls_edges:
            return
        from pkiform import trust

        # The child reads the state itself, while this process does too (each on its core).
        # The stamp is taken first: a state written after it makes the result unused.
        stamp = self._state_stamp()
        job = trust.start_baseline(self.config, lambda: self.load_state(decrypt=False),
                                   self.registry, at)
        if job is not None:
            self._baseline = (stamp, at, job)

    def take_baseline(self, at: datetime) -> Any:
        """The `trust.Baseline` computed ahead for the state as it is now at ``at``, or None."""
        ahead, self._baseline = self._baseline, None
        if ahead is None:
            return None
        stamp, started_at, job = ahead
        if stamp != self._state_stamp() or started_at != at:
            job.cancel()
            return None
        return job.result()

    def cancel_baseline(self) -> None:
        ahead, self._baseline = self._baseline, None
        if ahead is not None:
            ahead[2].cancel()

    def apply(
        self,
        plan: Plan,
        *,
        hooks: tuple[Hook, ...] = (),
        parallelism: int | None = None,
        lock_timeout: float = 0.0,
        keygen_workers: int | None = None,
        on_phase_end: Any = None,
        keys: KeySource | None = None,
    ) -> ApplyResult:
        """``keys``: a `KeySource` the caller started early (it already generates the plan's
        keys while the caller proves and shows the plan); closed here."""
        with self.store.lock("apply", timeout=lock_timeout):
            check_plan_current(plan, self.store)
            applier = Applier(
                plan, self.store, self.registry, self.transport_factory,
                hooks=hooks,
                parallelism=parallelism or self.config.settings.parallelism,
                keygen_workers=keygen_workers,
                on_phase_end=on_phase_end,
                keys=keys,
            )
            return applier.run()
