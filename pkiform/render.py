"""Plans and states as text for people (and as stable JSON for programs).

Rendering only ever sees plans and public state outputs; private keys are not in either, so
nothing here can print one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pkiform.plan import Change, Plan
from pkiform.provider import Action

SYMBOLS = {
    Action.CREATE: ("+", "create", "32"),
    Action.UPDATE: ("~", "update", "33"),
    Action.REPLACE: ("-/+", "replace", "35"),
    Action.DELETE: ("-", "delete", "31"),
    Action.RESTART: ("↻", "restart", "36"),
    Action.NOOP: (" ", "no-op", "0"),
}
KIND_ORDER = ("ca", "keypair", "secret", "cert", "kubeconfig", "file", "service")
JSON_FORMAT_VERSION = "1"


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and code != "0" else text

    def bold(self, text: str) -> str:
        return self(text, "1")


_KIND_RANK = {kind: (index, kind) for index, kind in enumerate(KIND_ORDER)}


def _kind_rank(change: Change) -> tuple[int, str]:
    kind = change.kind
    rank = _KIND_RANK.get(kind)
    return rank if rank is not None else (len(KIND_ORDER), kind)


def summary_counts(plan: Plan) -> dict[str, int]:
    counts = {"create": 0, "update": 0, "replace": 0, "delete": 0, "restart": 0}
    for action, number in Counter(change.action for change in plan.changes).items():
        if action is not Action.NOOP:
            counts[action.value] += number
    return counts


def summary_line(plan: Plan) -> str:
    c = summary_counts(plan)
    restarts = f", {c['restart']} to restart" if c["restart"] else ""
    return (f"Plan: {c['create']} to create, {c['update']} to update, {c['replace']} to "
            f"replace, {c['delete']} to delete{restarts}.")


_HEADS = {action: f"  {symbol.rjust(3)} " for action, (symbol, _w, _c) in SYMBOLS.items()}


def _render_change(lines: list[str], change: Change, style: Style) -> None:
    """One change's lines, appended to ``lines`` (65,000 changes in a CA rotation at 5,000
    nodes: no intermediate list per change, no style call per piece without color)."""
    action = change.action
    if style.color:
        symbol, _word, code = SYMBOLS[action]
        head = f"  {style(symbol.rjust(3), code)} {style(str(change.address), '1')}"
        dot = style("·", "2")
        if change.summary:
            head += f"  {style(change.summary, '2')}"
    else:
        head = _HEADS[action] + str(change.address)
        dot = "·"
        if change.summary:
            head += "  " + change.summary
    if change.rolling and action is Action.RESTART:
        width = "one host" if change.rolling_width == 1 else f"{change.rolling_width} hosts"
        head += f"  {style(f'(rolling: {width} at a time)', '2')}"
    lines.append(head)
    if change.reasons:
        prefix = f"        {dot} "
        lines.extend([prefix + reason for reason in change.reasons])


def render_plan(plan: Plan, *, color: bool = False, proof: Any = None) -> str:
    style = Style(color)
    if plan.is_empty:
        lines = ["No changes. The PKI matches the configuration and the state."]
        if proof is not None:
            lines.append(proof.summary())
        return "\n".join(lines) + "\n"
    lines = []
    lines.append(
        f"pkiform will perform the following actions (state serial {plan.serial}, "
        f"lineage {plan.lineage[:8]}, mode {plan.mode}):"
    )
    for note in plan.notes:
        lines.append(style(f"! {note}", "33"))
    multi = len(plan.phases) > 1
    by_phase: dict[str, list[Change]] = {phase.name: [] for phase in plan.phases}
    for change in plan.changes:
        if change.action is not Action.NOOP and change.phase in by_phase:
            by_phase[change.phase].append(change)
    for number, phase in enumerate(plan.phases, start=1):
        changes = by_phase[phase.name]
        lines.append("")
        if multi:
            lines.append(style(f"Phase {number}/{len(plan.phases)}: {phase.name} — "
                               f"{phase.description}", "1"))
        restarts = [c for c in changes if c.action is Action.RESTART]
        others = sorted((c for c in changes if c.action is not Action.RESTART),
                        key=lambda c: (_kind_rank(c), c.address.sort_key))
        for change in others:
            _render_change(lines, change, style)
        if restarts:
            lines.append(f"  {style('then restart', '36')} ({len(restarts)}):")
            for change in restarts:
                _render_change(lines, change, style)
        if phase.outside:
            lines.append(style("  After this phase, outside pkiform:", "33"))
            for note in phase.outside:
                lines.append(f"    - {note}")
    lines.append("")
    lines.append(style(summary_line(plan), "1"))
    if proof is not None:
        lines.append(proof.summary())
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan, proof: Any = None) -> str:
    document: dict[str, Any] = {
        "format_version": JSON_FORMAT_VERSION,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "state_hash": plan.state_hash,
        "mode": plan.mode,
        "at": plan.at.isoformat(),
        "empty": plan.is_empty,
        "notes": list(plan.notes),
        "phases": [{"name": p.name, "description": p.description, "outside": list(p.outside)}
                   for p in plan.phases],
        "changes": [
            {
                "address": str(c.address),
                "kind": c.kind,
                "action": c.action.value,
                "phase": c.phase,
                "host": c.host,
                "summary": c.summary,
                "reason": "; ".join(c.reasons),
                "reasons": list(c.reasons),
            }
            for c in plan.changes if c.action is not Action.NOOP
        ],
        "summary": summary_counts(plan),
    }
    if proof is not None:
        document["trust"] = proof.to_dict()
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def render_record(address: str, record: Any, secret_names: list[str]) -> str:
    lines = [f"# {address}", f"kind    = {record.kind}"]

    def emit(prefix: str, values: Mapping[str, Any]) -> None:
        for key, value in sorted(values.items()):
            if isinstance(value, str) and "\n" in value:
                lines.append(f"{prefix}{key} = <<EOT")
                lines.extend(value.rstrip("\n").split("\n"))
                lines.append("EOT")
            else:
                lines.append(f"{prefix}{key} = {json.dumps(value)}")

    emit("input.", record.inputs)
    emit("output.", record.outputs)
    for name in secret_names:
        lines.append(f"secret.{name} = (sensitive, encrypted in state)")
    return "\n".join(lines) + "\n"
