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
        """The record as a dict of its own mappings (not copies): for encoding, not mutating."""
        return {
            "kind": self.kind,
            "inputs": self.inputs,
            "deps": self.deps,
            "digests": self.digests,
            "outputs": self.outputs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceState:
        """A record from a mapping the caller hands over (freshly parsed JSON).

        Plain dicts inside it are adopted, not copied (a 5,000-node state has 25,000 records);
        anything else is copied into a dict, which also rejects what is not a mapping.
        """
        kind, get = data["kind"], data.get
        inputs, deps, digests, outputs = get("inputs"), get("deps"), get("digests"), get("outputs")
        if (type(kind) is str and type(inputs) is dict and type(deps) is dict
                and type(digests) is dict and type(outputs) is dict):
            return cls(kind, inputs, deps, digests, outputs)
        return cls(
            str(kind),
            _adopt(data, "inputs"),
            _adopt(data, "deps"),
            _adopt(data, "digests"),
            _adopt(data, "outputs"),
        )


def _adopt(data: Mapping[str, Any], field: str) -> dict[str, Any]:
    value = data.get(field)
    if type(value) is dict:
        return value
    return dict(value) if field in data else {}


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
