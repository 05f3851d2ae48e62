"""Saved plans (``plan --out``): JSON, authenticated with the state key, bound to a state.

The file holds the whole plan (each change with the resource spec it builds), the hash of the
exact state it was made against, and an HMAC under a key derived from the state key. Apply
refuses a file whose MAC fails (tampered) or whose state hash differs from the state on disk
(stale), which closes the "plan against empty state, apply it twice" hole.
No private material is in a plan: specs are config, and outputs are rendered at apply time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pkiform.address import Address, Ref
from pkiform.errors import PlanError
from pkiform.model import Host, ResourceSpec
from pkiform.plan import Change, PhaseInfo, Plan
from pkiform.provider import Action
from pkiform.state.secrets import StateKey
from pkiform.state.store import write_atomically

FORMAT = "pkiform-plan/1"


def _encode(value: Any) -> Any:
    if isinstance(value, Address):
        return {"$address": str(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$address"}:
            return Address.parse(value["$address"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


def change_to_dict(change: Change) -> dict[str, Any]:
    spec = change.spec
    return {
        "address": str(change.address),
        "action": change.action.value,
        "phase": change.phase,
        "reasons": list(change.reasons),
        "kind": change.kind,
        "step": change.step,
        "outputs": list(change.outputs),
        "dependencies": [str(r) for r in change.dependencies],
        "order_after": [str(a) for a in change.order_after],
        "summary": change.summary,
        "rolling": change.rolling,
        "rolling_width": change.rolling_width,
        "steps_total": list(change.steps_total),
        "spec": None if spec is None else {
            "attributes": _encode(dict(spec.attributes)),
            "host": spec.host.name if spec.host else None,
            "origin": spec.origin,
        },
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "state_hash": plan.state_hash,
        "mode": plan.mode,
        "at": plan.at.isoformat(),
        "created": plan.created.isoformat(),
        "config_path": plan.config_path,
        "hosts": {name: host.to_dict() for name, host in sorted(plan.hosts.items())},
        "notes": list(plan.notes),
        "phases": [{"name": p.name, "description": p.description, "outside": list(p.outside)}
                   for p in plan.phases],
        "changes": [change_to_dict(c) for c in plan.changes],
    }


def plan_from_dict(data: Mapping[str, Any]) -> Plan:
    hosts = {name: Host.from_dict(h) for name, h in data["hosts"].items()}
    changes = []
    for c in data["changes"]:
        spec = None
        if c["spec"] is not None:
            host = hosts.get(c["spec"]["host"]) if c["spec"]["host"] else None
            spec = ResourceSpec(Address.parse(c["address"]), _decode(c["spec"]["attributes"]),
                                host, c["spec"]["origin"])
        changes.append(Change(
            address=Address.parse(c["address"]),
            action=Action(c["action"]),
            phase=c["phase"],
            reasons=tuple(c["reasons"]),
            kind=c["kind"],
            step=c["step"],
            outputs=tuple(c["outputs"]),
            spec=spec,
            dependencies=tuple(Ref.parse(r) for r in c["dependencies"]),
            order_after=tuple(Address.parse(a) for a in c["order_after"]),
            summary=c["summary"],
            rolling=c["rolling"],
            rolling_width=int(c.get("rolling_width", 1)),
            steps_total=tuple(c["steps_total"]),
        ))
    return Plan(
        changes=tuple(changes),
        phases=tuple(PhaseInfo(p["name"], p["description"], tuple(p["outside"]))
                     for p in data["phases"]),
        lineage=data["lineage"],
        serial=int(data["serial"]),
        state_hash=data["state_hash"],
        mode=data["mode"],
        at=datetime.fromisoformat(data["at"]),
        created=datetime.fromisoformat(data["created"]),
        config_path=data["config_path"],
        hosts=hosts,
        notes=tuple(data["notes"]),
    )


def save_plan(plan: Plan, path: Path, key: StateKey) -> None:
    body = json.dumps(plan_to_dict(plan), sort_keys=True, separators=(",", ":"))
    document = {"format": FORMAT, "mac": key.mac(body.encode()), "plan": body}
    write_atomically(Path(path), json.dumps(document, indent=1).encode(), mode=0o600)


def load_plan(path: Path, key: StateKey) -> Plan:
    try:
        document = json.loads(Path(path).read_text())
        body = document["plan"]
        mac = document["mac"]
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file", hint="make one with pkiform plan --out") \
            from None
    except (ValueError, KeyError, TypeError):
        raise PlanError(f"{path}: not a pkiform plan file (or truncated)",
                        hint="make a new one with pkiform plan --out") from None
    if document.get("format") != FORMAT:
        raise PlanError(f"{path}: plan format {document.get('format')!r} is not {FORMAT}",
                        hint="make a new plan with this pkiform")
    import hmac

    if not isinstance(body, str) or not hmac.compare_digest(str(mac), key.mac(body.encode())):
        raise PlanError(f"{path}: the plan file failed authentication (tampered, or made for "
                        "another state key)", hint="make a new plan with pkiform plan --out")
    try:
        return plan_from_dict(json.loads(body))
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: plan body is malformed ({exc})",
                        hint="make a new plan") from None
