"""The one small protocol every resource kind implements, and the registry that finds them.

A provider is a resource kind (``ca``, ``cert``, ``file``…). The engine asks it four things:
which outputs of which resources it depends on, what its config inputs are, what a change
means (`plan`), and how to carry it out (`apply`). Third parties add kinds through the entry
point group ``pkiform.providers``; the built-in kinds live in ``pkiform.providers``.

The engine never imports a concrete provider: it only sees this protocol through the registry.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, Host, ResourceSpec


class Action(enum.Enum):
    # Declared strongest last: when several reasons apply, the strongest action wins.
    NOOP = "no-op"
    RESTART = "restart"
    UPDATE = "update"
    REPLACE = "replace"
    CREATE = "create"
    DELETE = "delete"

    @property
    def strength(self) -> int:
        return _STRENGTH[self]


_STRENGTH = {action: index for index, action in enumerate(Action)}

ALL_OUTPUTS: frozenset[str] = frozenset({"*"})


@attrs.frozen
class Field:
    """One config attribute of a kind: its type, default and a one-line doc for errors."""

    type: str  # str, int, bool, list[str], ref, list[ref], mode, table
    required: bool = False
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    ref_kinds: tuple[str, ...] = ()
    interpolate: bool = True


@attrs.frozen
class OutputInfo:
    secret: bool = False
    doc: str = ""


@attrs.frozen
class Decision:
    action: Action
    reasons: tuple[str, ...] = ()
    outputs: frozenset[str] = frozenset()  # which outputs get new values; ALL_OUTPUTS = every
    step: str | None = None

    @staticmethod
    def noop() -> Decision:
        return _NOTHING  # frozen: one shared value (a plan asks for it 80,000 times)

    def merge(self, other: Decision) -> Decision:
        # Most merges involve a no-op (nothing to say about this resource): keep the other.
        if other.action is Action.NOOP and not other.reasons and not other.outputs \
                and other.step is None:
            return self
        if self.action is Action.NOOP and not self.reasons and not self.outputs \
                and self.step is None:
            return other
        action = max(self.action, other.action, key=lambda a: a.strength)
        outputs = (
            ALL_OUTPUTS
            if ALL_OUTPUTS in (self.outputs, other.outputs)
            else self.outputs | other.outputs
        )
        reasons = self.reasons + tuple(r for r in other.reasons if r not in self.reasons)
        return Decision(action, reasons, outputs, self.step or other.step)


_NOTHING = Decision(Action.NOOP)


@attrs.frozen
class ReplaceStep:
    """One step of a phased replacement (e.g. a CA rotation: trust both, reissue, retire)."""

    name: str  # the step's id, recorded in state while a rotation is under way
    phase: str  # the plan phase it runs in: "trust-both", "reissue", "retire" or "apply"
    action: Action
    outputs: frozenset[str]
    description: str


PHASES: tuple[str, ...] = ("trust-both", "reissue", "retire")
PHASE_DOCS: Mapping[str, str] = {
    "apply": "apply",
    "trust-both": "trust both the old and the new CA/key everywhere, then restart consumers",
    "reissue": "issue and deploy leaves signed by the new CA/key, then restart consumers",
    "retire": "drop the old CA/key from every trust bundle, then restart consumers",
}


@attrs.frozen
class Observation:
    """What a transport read on a host at plan time (refresh)."""

    content_sha256: str | None = None  # None: file missing
    mode: int | None = None
    owner: str | None = None  # None where the transport does not manage owners (local)
    group: str | None = None
    is_symlink: bool = False
    serving_fingerprint: str | None = None  # what the process presents now
    expected_fingerprint: str | None = None  # the certificate in state it should present


@attrs.frozen(eq=False)
class PlanRequest:
    spec: ResourceSpec
    prior: Any  # ResourceState | None (typed loosely: the engine's state type)
    changed_dependencies: Mapping[Ref, str]  # dep output → human cause ("ca.etcd replaced")
    now: datetime
    renew_before_days: int
    observation: Observation | None = None


@attrs.frozen(eq=False)
class ResourceResult:
    """What a provider reports after applying one change."""

    outputs: Mapping[str, Any]  # public, stored in plaintext state (certs, fingerprints, dates)
    secrets: Mapping[str, str]  # private, stored encrypted (keys, tokens)
    digests: Mapping[str, str]  # output name → digest, what dependents compare against
    message: str = ""


class ApplyContext(Protocol):
    """What the engine offers a provider while applying one change."""

    now: datetime

    def value(self, ref: Ref) -> bytes:
        """The current value of a dependency's output (after earlier steps of this apply)."""

    def private_key(self, address: Address, algorithm: str) -> bytes:
        """A fresh private key PEM (generated ahead of time in the keygen process pool)."""

    hosts: Mapping[str, Host]

    def host_transport(self, host: Host) -> Any:
        """The transport for a host (file writes, restarts)."""

    def is_secret(self, ref: Ref) -> bool:
        """Whether a dependency's output is private material (decides default file modes)."""


@attrs.frozen(eq=False)
class ApplyRequest:
    spec: ResourceSpec
    prior: Any  # ResourceState | None
    prior_secrets: Mapping[str, str]
    action: Action
    step: str | None
    context: ApplyContext


@runtime_checkable
class Provider(Protocol):
    kind: ClassVar[str]
    fields: ClassVar[Mapping[str, Field]]
    outputs: ClassVar[Mapping[str, OutputInfo]]
    per_host: ClassVar[bool]  # instances must live on a host (files, services)
    # Optional, read with getattr: ``inline: ClassVar[bool]`` (default False) says a kind that
    # is not per host applies as short CPU work in this process, waiting on nothing outside
    # (a signature, a rendering): the applier then runs it in its own thread instead of on a
    # worker thread. A kind that calls out (an HTTP API, a KMS) leaves it False.

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]: ...

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None: ...

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]: ...

    def plan(self, request: PlanRequest) -> Decision: ...

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]: ...

    def apply(self, request: ApplyRequest) -> ResourceResult: ...

    def output_value(
        self, spec: ResourceSpec, outputs: Mapping[str, Any], secrets: Mapping[str, str], name: str
    ) -> bytes: ...

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        """Key algorithms this change will ask `ApplyContext.private_key` for (prefetch)."""
        ...

    def delete(self, address: Address, prior: Any, context: ApplyContext) -> str: ...


ENTRY_POINT_GROUP = "pkiform.providers"


class Registry:
    """Resource kinds by name. Built-ins first, then entry points (which may not shadow them)."""

    def __init__(self, providers: Mapping[str, Provider] | None = None, *,
                 discover: Callable[[Registry], None] | None = None) -> None:
        """``discover`` registers more kinds (the entry points); it runs once, the first time
        a kind is asked for that is not registered yet, or the full list is."""
        self._providers: dict[str, Provider] = dict(providers or {})
        self._discover = discover
        self._discover_lock = threading.Lock()

    def register(self, provider: Provider) -> None:
        if provider.kind in self._providers:
            raise ConfigError(f"resource kind {provider.kind!r} is registered twice")
        self._providers[provider.kind] = provider

    def _discovered(self) -> None:
        with self._discover_lock:
            discover, self._discover = self._discover, None
            if discover is not None:
                discover(self)

    def __getitem__(self, kind: str) -> Provider:
        provider = self._providers.get(kind)
        if provider is None:
            self._discovered()
            provider = self._providers.get(kind)
        if provider is None:
            raise ConfigError(
                f"unknown resource kind {kind!r}",
                hint=f"use one of: {', '.join(sorted(self._providers))}",
            )
        return provider

    def __contains__(self, kind: object) -> bool:
        if kind in self._providers:
            return True
        self._discovered()
        return kind in self._providers

    def kinds(self) -> list[str]:
        """Every kind there is (the entry points read, if they were not yet)."""
        self._discovered()
        return sorted(self._providers)

    def registered(self) -> list[str]:
        """The kinds registered so far: the built-ins, and third-party kinds if a config
        asked for one (so every kind a loaded config uses), without reading entry points."""
        return sorted(self._providers)

    @classmethod
    def with_entry_points(
        cls, builtins: Callable[[], Sequence[Provider]], group: str = ENTRY_POINT_GROUP
    ) -> Registry:
        """The built-in kinds, and those of the entry point group ``group``, which are looked
        up only when a config names a kind that is not built in: reading every installed
        distribution's metadata costs ~30 ms, on every command, for configs that almost
        always use built-in kinds only. An entry point never shadows a built-in."""

        def discover(registry: Registry) -> None:
            from importlib.metadata import entry_points

            for entry in entry_points(group=group):
                if entry.name in registry._providers:
                    continue  # the built-in wins; our package registers its own kinds too
                loaded = entry.load()
                provider = loaded() if isinstance(loaded, type) else loaded
                if getattr(provider, "kind", None) != entry.name:
                    raise ConfigError(
                        f"entry point {entry.name!r} of group {group!r} ({entry.value}) "
                        f"gives a provider of kind {getattr(provider, 'kind', None)!r}",
                        hint="name the entry point after the kind its provider implements")
                registry.register(provider)

        registry = cls(discover=discover)
        for provider in builtins():
            registry.register(provider)
        return registry
