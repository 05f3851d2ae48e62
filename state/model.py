"""The state as data: one record per resource address, plus a separate secrets section.

Private material (keys, secret values) never sits in `ResourceState`; it lives in
`State.secrets` so the store can encrypt exactly that section and nothing else is sensitive.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import attrs

FORMAT_VERSION = 1


@attrs.frozen(eq=True)
class ResourceState:
    kind: str
    inputs: Mapping[str, Any] = attrs.field(factory=dict)
    deps: Mapping[str, str] = attrs.field(factory=dict)  # "addr:output" → digest built from
    digests: Mapping[str, str] = attrs.field(factory=dict)  # output → digest
    outputs: Mapping[str, Any] = attrs.field(factory=dict)  # public values

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "inputs": dict(self.inputs),
            "deps": dict(self.deps),
            "digests": dict(self.digests),
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceState:
        return cls(
            kind=str(data["kind"]),
            inputs=dict(data.get("inputs", {})),
            deps=dict(data.get("deps", {})),
            digests=dict(data.get("digests", {})),
            outputs=dict(data.get("outputs", {})),
        )


@attrs.frozen(eq=True)
class State:
    lineage: str
    serial: int = 0
    version: int = FORMAT_VERSION
    resources: Mapping[str, ResourceState] = attrs.field(factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)  # plaintext in memory

    @classmethod
    def empty(cls, lineage: str | None = None) -> State:
        return cls(lineage=lineage or str(uuid.uuid4()))

    @property
    def is_empty(self) -> bool:
        return not self.resources

    def get(self, address: str) -> ResourceState | None:
        return self.resources.get(address)

    def secrets_of(self, address: str) -> Mapping[str, str]:
        return self.secrets.get(address, {})

    def with_resource(
        self, address: str, record: ResourceState | None, secrets: Mapping[str, str] | None
    ) -> State:
        """A new state with one record set (or removed when ``record`` is None)."""
        resources = dict(self.resources)
        all_secrets = dict(self.secrets)
        if record is None:
            resources.pop(address, None)
            all_secrets.pop(address, None)
        else:
            resources[address] = record
            if secrets:
                all_secrets[address] = dict(secrets)
            else:
                all_secrets.pop(address, None)
        return attrs.evolve(self, resources=resources, secrets=all_secrets)
