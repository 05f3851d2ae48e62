"""Fast in-memory fakes for the engine laws: three tiny resource kinds and a recording transport.

* ``node`` — no host; outputs ``out`` (derived from its ``value``, the values of its
  dependencies and a generation counter), ``stable`` (derived from ``value`` alone: replacing
  a node does not change it, so dependents that only read ``stable`` must not be replanned)
  and the secret ``token``. ``phased = true`` makes its replacement a three-step rotation
  (trust-both / reissue / retire), like a CA.
* ``file`` — per host; writes the bytes of a ``node``'s output through the host transport.
* ``service`` — per host; ``create_action = RESTART``; restarted through the transport when a
  file it ``uses`` changes; ``max_unavailable = 1`` makes its instances a rolling group.

Every value is a pure function of the configuration and of how often a node was replaced, so
two runs that end in the same logical place end in byte-identical states. Everything observable
(provider start/end, file writes, restarts) goes through one `Recorder` with a global sequence
counter, so ordering laws compare sequence numbers rather than clocks.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import attrs
from hypothesis import Phase

from pkiform.address import Address, Ref
from pkiform.apply import Applier, ApplyResult, Event
from pkiform.model import Config, Host, ResourceSpec, Settings
from pkiform.plan import Plan, Planner
from pkiform.provider import (
    ALL_OUTPUTS,
    Action,
    ApplyRequest,
    Decision,
    Field,
    OutputInfo,
    PlanRequest,
    Registry,
    ReplaceStep,
    ResourceResult,
)
from pkiform.state.model import State
from pkiform.state.store import StateStore
from pkiform.transport.base import FileStat, RestartOutcome

NOW = datetime(2030, 1, 1, tzinfo=UTC).replace(microsecond=0)
# PKIFORM_PROPERTY_SCALE=10 runs ten times the examples (a longer local hunt for bugs).
SCALE = float(os.environ.get("PKIFORM_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


# Every phase but `explain`: it re-runs failing examples with threads and real I/O and can trip
# hypothesis' own assertions on such tests, which would hide the real failure.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
NODE_CHANGING = frozenset({"out"})  # what a node's replacement (every step) changes


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class InjectedFault(RuntimeError):
    """Raised by a fake provider or transport when a test asks it to fail."""


# -- the recorder ------------------------------------------------------------------------------


@attrs.frozen
class Span:
    """One provider call: ``start``/``end`` are global sequence numbers."""

    address: Address
    action: Action
    step: str | None
    start: int
    end: int | None  # None: it raised


@attrs.frozen
class Write:
    seq: int
    host: str
    path: str
    content: bytes


@attrs.frozen
class Restart:
    host: str
    unit: str
    start: int
    end: int
    t_start: float
    t_end: float


class Recorder:
    """Shared by the fake providers and transports of one test run; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.spans: list[Span] = []
        self.writes: list[Write] = []
        self.restarts: list[Restart] = []
        self.deletes: list[tuple[int, Address]] = []
        self.fail: set[Address] = set()  # provider apply raises for these
        self.fail_writes = False  # transport writes raise while set
        self.apply_delay = 0.0
        self.restart_delay = 0.0

    def tick(self) -> int:
        with self._lock:
            return next(self._counter)

    def reset(self) -> None:
        with self._lock:
            self.spans.clear()
            self.writes.clear()
            self.restarts.clear()
            self.deletes.clear()

    @contextmanager
    def span(self, request: ApplyRequest) -> Iterator[None]:
        address = request.spec.address
        start = self.tick()
        if self.apply_delay:
            time.sleep(self.apply_delay)
        try:
            if address in self.fail:
                raise InjectedFault(f"injected fault in {address}")
            yield
        except BaseException:
            with self._lock:
                self.spans.append(Span(address, request.action, request.step, start, None))
            raise
        end = self.tick()
        with self._lock:
            self.spans.append(Span(address, request.action, request.step, start, end))

    def span_of(self, address: Address) -> list[Span]:
        return [s for s in self.spans if s.address == address]


class FakeTransport:
    """Keeps files in memory, records writes and restarts; a restart sleeps ``restart_delay``."""

    def __init__(self, host: Host, recorder: Recorder) -> None:
        self.host = host
        self.recorder = recorder
        self.files: dict[str, bytes] = {}

    def read_files(self, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        return {p: FileStat(sha(self.files[p]), 0o644, "root", "root") if p in self.files
                else None for p in paths}

    def write_file(self, path: str, content: bytes, *, mode: int, owner: str | None,
                   group: str | None, backup: bool = True) -> None:
        if self.recorder.fail_writes:
            raise InjectedFault(f"injected write failure: {path} on {self.host.name}")
        seq = self.recorder.tick()
        self.files[path] = content
        with self.recorder._lock:
            self.recorder.writes.append(Write(seq, self.host.name, path, content))

    def remove_file(self, path: str) -> bool:
        return self.files.pop(path, None) is not None

    def restart_service(self, unit: str, *, reload: bool, health: Any, timeout: float
                        ) -> RestartOutcome:
        t_start, start = time.perf_counter(), self.recorder.tick()
        if self.recorder.restart_delay:
            time.sleep(self.recorder.restart_delay)
        end, t_end = self.recorder.tick(), time.perf_counter()
        with self.recorder._lock:
            self.recorder.restarts.append(Restart(self.host.name, unit, start, end,
                                                  t_start, t_end))
        return RestartOutcome(True, "restarted (fake)")

    def serving_certificate(self, endpoint: str) -> bytes | None:
        return None

    def close(self) -> None:
        return None


# -- the fake kinds -------------------------------------------------------------------------


class _Fake:
    per_host: ClassVar[bool] = False

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        return None

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None
                    ) -> Sequence[str]:
        return []

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        seq = self.recorder.tick()
        with self.recorder._lock:
            self.recorder.deletes.append((seq, address))
        return "forgotten"


class NodeProvider(_Fake):
    kind: ClassVar[str] = "node"
    fields: ClassVar[Mapping[str, Field]] = {
        "value": Field("str", required=True),
        "deps": Field("list[ref]", default=()),  # a list of Ref (output-level dependencies)
        "phased": Field("bool", default=False),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "out": OutputInfo(),
        "stable": OutputInfo(),
        "token": OutputInfo(secret=True),
    }

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return list(spec.get("deps") or ())

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return {
            "value": spec["value"],
            "deps": [str(r) for r in spec.get("deps") or ()],
            "phased": bool(spec.get("phased")),
        }

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if prior is not None and dict(prior.inputs) != dict(self.inputs(request.spec)):
            decision = Decision(Action.UPDATE, ("inputs changed",),
                                frozenset({"out", "stable", "token"}))
        if request.changed_dependencies:
            causes = tuple(sorted(set(request.changed_dependencies.values())))
            decision = decision.merge(Decision(Action.UPDATE, causes,
                                               frozenset({"out", "token"})))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        changing = NODE_CHANGING | {"token"}
        if spec.get("phased") and mode != "immediate":
            return [
                ReplaceStep("add", "trust-both", Action.REPLACE, changing, "add"),
                ReplaceStep("switch", "reissue", Action.UPDATE, changing, "switch"),
                ReplaceStep("retire", "retire", Action.UPDATE, changing, "retire"),
            ]
        return [ReplaceStep("replace", "apply", Action.REPLACE, changing, "new generation")]

    def apply(self, request: ApplyRequest) -> ResourceResult:
        with self.recorder.span(request):
            spec, prior = request.spec, request.prior
            generation = int(prior.outputs.get("generation", 0)) if prior is not None else 0
            if prior is not None and (request.step is not None
                                      or request.action is Action.REPLACE):
                generation += 1
            values = [request.context.value(ref).decode() for ref in self.dependencies(spec)]
            out = sha("|".join([spec["value"], str(generation), *values]))
            stable = sha("stable|" + spec["value"])
            outputs = {"value": spec["value"], "generation": generation, "out": out,
                       "stable": stable}
            secrets = {"token": sha("token|" + out)}
            digests = {name: sha(self.output_value(outputs, secrets, name))
                       for name in self.outputs}
            return ResourceResult(outputs, secrets, digests, f"generation {generation}")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        if name == "token":
            return secrets["token"].encode()
        return str(outputs[name]).encode()


class FileProvider(_Fake):
    kind: ClassVar[str] = "file"
    per_host: ClassVar[bool] = True
    fields: ClassVar[Mapping[str, Field]] = {
        "path": Field("str", required=True),
        "source": Field("ref", required=True),
        "content": Field("str", required=True),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {"content": OutputInfo()}

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return [Ref(spec["source"], spec["content"])]

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return {"path": spec["path"], "source": str(spec["source"]),
                "content": spec["content"], "host": spec.host.name if spec.host else ""}

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if prior is not None and dict(prior.inputs) != dict(self.inputs(request.spec)):
            decision = Decision(Action.UPDATE, ("inputs changed",), frozenset({"content"}))
        if request.changed_dependencies:
            causes = tuple(sorted(set(request.changed_dependencies.values())))
            decision = decision.merge(Decision(Action.UPDATE, causes, frozenset({"content"})))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("replace", "apply", Action.REPLACE, ALL_OUTPUTS, "rewritten")]

    def apply(self, request: ApplyRequest) -> ResourceResult:
        with self.recorder.span(request):
            spec = request.spec
            assert spec.host is not None
            content = request.context.value(Ref(spec["source"], spec["content"]))
            request.context.host_transport(spec.host).write_file(
                spec["path"], content, mode=0o644, owner=None, group=None)
            digest = sha(content)
            outputs = {"host": spec.host.name, "path": spec["path"], "content_sha256": digest}
            return ResourceResult(outputs, {}, {"content": digest}, f"{len(content)} bytes")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        if name != "content":
            raise KeyError(name)
        return str(outputs["content_sha256"]).encode()

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        super().delete(address, prior, context)
        host = context.hosts[prior.outputs["host"]]
        context.host_transport(host).remove_file(prior.outputs["path"])
        return f"removed {prior.outputs['path']}"


class ServiceProvider(_Fake):
    kind: ClassVar[str] = "service"
    per_host: ClassVar[bool] = True
    create_action: ClassVar[Action] = Action.RESTART
    fields: ClassVar[Mapping[str, Field]] = {
        "unit": Field("str", required=True),
        "uses": Field("list[ref]", default=()),
        "max_unavailable": Field("int"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {}

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return [Ref(f, "content") for f in spec.get("uses") or ()]

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return {"unit": spec["unit"], "host": spec.host.name if spec.host else ""}

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        if request.changed_dependencies:
            files = sorted({str(ref.address) for ref in request.changed_dependencies})
            decision = Decision(Action.RESTART, tuple(f"{f} changed" for f in files))
        prior = request.prior
        if prior is not None and dict(prior.inputs) != dict(self.inputs(request.spec)):
            decision = decision.merge(Decision(Action.RESTART, ("unit changed",)))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("restart", "apply", Action.RESTART, frozenset(), "restart")]

    def apply(self, request: ApplyRequest) -> ResourceResult:
        with self.recorder.span(request):
            spec = request.spec
            assert spec.host is not None
            outcome = request.context.host_transport(spec.host).restart_service(
                spec["unit"], reload=False, health=None, timeout=1.0)
            return ResourceResult({"host": spec.host.name, "unit": spec["unit"]}, {}, {},
                                  outcome.detail)

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        raise KeyError(name)


def fake_registry(recorder: Recorder) -> Registry:
    return Registry({p.kind: p for p in (NodeProvider(recorder), FileProvider(recorder),
                                         ServiceProvider(recorder))})


# -- wiring -------------------------------------------------------------------------------


def make_config(hosts: Mapping[str, Host], resources: Mapping[Address, ResourceSpec],
                tls_edges: tuple[Any, ...] = ()) -> Config:
    return Config(path="/nonexistent/pkiform.toml", settings=Settings(), hosts=dict(hosts),
                  resources=dict(resources), tls_edges=tuple(tls_edges))


@contextmanager
def scratch() -> Iterator[Path]:
    """A temp directory, in RAM when possible (the journal fsyncs every step)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="pkiform-props-", dir=base) as tmp:
        yield Path(tmp)


def state_store(root: Path, name: str = "state") -> StateStore:
    """A store with its key in a file beside it (no environment, no $XDG_CONFIG_HOME)."""
    return StateStore(root / name, key_file=root / "state.key")


class Harness:
    """One fake world: a config, a registry of fakes, a recorder and a state store."""

    def __init__(self, config: Config, root: Path, name: str = "state") -> None:
        self.config = config
        self.root = root
        self.name = name
        self.recorder = Recorder()
        self.registry = fake_registry(self.recorder)
        self.transports: dict[str, FakeTransport] = {}

    def store(self) -> StateStore:
        return state_store(self.root, self.name)  # a fresh one: as a new process would

    def transport(self, host: Host) -> FakeTransport:
        if host.name not in self.transports:
            self.transports[host.name] = FakeTransport(host, self.recorder)
        return self.transports[host.name]

    def plan(self, *, replace: Sequence[str] = (), mode: str = "zero-downtime",
             config: Config | None = None, state: State | None = None) -> Plan:
        state = state if state is not None else self.store().load(decrypt=False)
        return Planner(config or self.config, state, self.registry).plan(
            replace=replace, mode=mode, now=NOW)

    def apply(self, plan: Plan, *, parallelism: int = 4,
              hooks: tuple[Callable[[Event], None], ...] = (),
              on_phase_end: Callable[[str, State], None] | None = None) -> ApplyResult:
        return Applier(plan, self.store(), self.registry, self.transport,
                       parallelism=parallelism, keygen_workers=1, now=NOW, hooks=hooks,
                       on_phase_end=on_phase_end).run()
