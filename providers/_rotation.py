"""Generations of a rotatable credential (a CA, the service-account key, an encryption key).

A rotatable resource keeps a list of generations in its state and the index of the active one
(the one that signs). Its trust output lists every generation, active first: during a
zero-downtime rotation consumers trust old and new at once, and components that need a single
cert/key pair (the controller-manager's --cluster-signing-cert-file) read the first one, which
always matches the active key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pkiform.provider import ALL_OUTPUTS, Action, ReplaceStep

STEP_ADD = "add-new"
STEP_SWITCH = "switch"
STEP_RETIRE = "retire-old"
STEP_REPLACE = "replace"


def rotation_steps(
    mode: str, *, trust_outputs: frozenset[str], signing_outputs: frozenset[str], what: str
) -> list[ReplaceStep]:
    if mode == "immediate":
        return [ReplaceStep(STEP_REPLACE, "apply", Action.REPLACE, ALL_OUTPUTS,
                            f"new {what} replaces the old one at once (breaks connections "
                            "until every consumer restarted)")]
    return [
        ReplaceStep(STEP_ADD, "trust-both", Action.REPLACE, trust_outputs,
                    f"new {what} generated; trusted beside the old one"),
        ReplaceStep(STEP_SWITCH, "reissue", Action.UPDATE, signing_outputs | trust_outputs,
                    f"new {what} becomes the active one"),
        ReplaceStep(STEP_RETIRE, "retire", Action.UPDATE, trust_outputs,
                    f"old {what} dropped from trust"),
    ]


class Generations:
    """Immutable view of ``outputs["generations"]`` / ``outputs["active"]`` and key secrets."""

    def __init__(self, outputs: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        self.items: list[dict[str, Any]] = [dict(g) for g in outputs.get("generations", [])]
        self.active: int = int(outputs.get("active", 0))
        self.keys: list[str] = [secrets.get(f"key.{i}", "") for i in range(len(self.items))]

    @classmethod
    def single(cls, public: dict[str, Any], key: str) -> Generations:
        return cls({"generations": [public], "active": 0}, {"key.0": key})

    def trust_order(self) -> list[dict[str, Any]]:
        return [self.items[self.active]] + [
            g for i, g in enumerate(self.items) if i != self.active
        ]

    @property
    def active_item(self) -> dict[str, Any]:
        return self.items[self.active]

    @property
    def active_key(self) -> str:
        return self.keys[self.active]

    def step(self, step: str | None, action: Action, new: tuple[dict[str, Any], str] | None
             ) -> Generations:
        """The generations after one rotation step (or a plain replace)."""
        items, keys, active = list(self.items), list(self.keys), self.active
        if step == STEP_ADD:
            assert new is not None
            items.append(new[0])
            keys.append(new[1])
        elif step == STEP_SWITCH:
            active = len(items) - 1
        elif step == STEP_RETIRE:
            items, keys, active = [items[active]], [keys[active]], 0
        elif action in (Action.CREATE, Action.REPLACE):
            assert new is not None
            items, keys, active = [new[0]], [new[1]], 0
        result = Generations({"generations": items, "active": active},
                             {f"key.{i}": k for i, k in enumerate(keys)})
        return result

    def to_outputs(self) -> dict[str, Any]:
        return {"generations": self.items, "active": self.active}

    def to_secrets(self) -> dict[str, str]:
        return {f"key.{i}": k for i, k in enumerate(self.keys)}
