"""Resource addresses: ``<kind>.<name>`` and ``<kind>.<name>[<host>]`` for per-host instances.

Addresses are what users type (``--replace cert.apiserver[control-1]``), what plans and the
state are keyed by, and what every error names. They sort by (kind, name, host) so that every
order pkiform prints or walks is deterministic.
"""

from __future__ import annotations

import re

import attrs

from pkiform.errors import ConfigError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-]*"
_ADDRESS_RE = re.compile(
    rf"^(?P<kind>[a-z][a-z0-9_]*)\.(?P<name>{NAME_PATTERN})(?:\[(?P<host>{NAME_PATTERN}|\*)\])?$"
)
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")


@attrs.frozen(order=False, cache_hash=True)
class Address:
    kind: str
    name: str
    host: str | None = None
    # The text form, made once: state records are keyed by it, so a 5,000-node plan asks
    # for it hundreds of thousands of times.
    _text: str = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        text = (f"{self.kind}.{self.name}[{self.host}]" if self.host
                else f"{self.kind}.{self.name}")
        object.__setattr__(self, "_text", text)

    @property
    def sort_key(self) -> tuple[str, str, str]:
        # A global resource sorts before its per-host instances (host None → "").
        return (self.kind, self.name, self.host or "")

    def __lt__(self, other: Address) -> bool:
        return self.sort_key < other.sort_key

    def __le__(self, other: Address) -> bool:
        return self.sort_key <= other.sort_key

    def __gt__(self, other: Address) -> bool:
        return self.sort_key > other.sort_key

    def __ge__(self, other: Address) -> bool:
        return self.sort_key >= other.sort_key

    @classmethod
    def parse(cls, text: str) -> Address:
        match = _ADDRESS_RE.match(text.strip())
        if not match:
            raise ConfigError(
                f"{text!r} is not a resource address",
                hint="write <kind>.<name> or <kind>.<name>[<host>], e.g. cert.apiserver[control-1]",
            )
        return cls(match["kind"], match["name"], match["host"])

    @property
    def base(self) -> Address:
        """The address without its host index (the declaration a per-host instance came from)."""
        return Address(self.kind, self.name) if self.host else self

    def on(self, host: str) -> Address:
        return Address(self.kind, self.name, host)

    def __str__(self) -> str:
        return self._text


@attrs.frozen(order=True, cache_hash=True)
class Ref:
    """A dependency on one named output of another resource (an edge of the graph)."""

    address: Address
    output: str
    _text: str = attrs.field(init=False, eq=False, order=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_text", f"{self.address}:{self.output}")

    def __str__(self) -> str:
        return self._text

    @classmethod
    def parse(cls, text: str) -> Ref:
        addr, _, output = text.rpartition(":")
        return cls(Address.parse(addr), output)
