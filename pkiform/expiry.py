"""``pkiform expiry``: a table like ``kubeadm certs check-expiration``, from the state."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import attrs

from pkiform.model import Config
from pkiform.state.model import State


@attrs.frozen
class ExpiryRow:
    address: str
    kind: str
    expires: datetime
    residual_days: int
    signer: str
    hosts: tuple[str, ...]
    renew_before_days: int

    @property
    def due(self) -> bool:
        return self.residual_days <= self.renew_before_days

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "kind": self.kind,
            "expires": self.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "residual_days": self.residual_days,
            "signer": self.signer,
            "hosts": list(self.hosts),
            "renew_before_days": self.renew_before_days,
            "due": self.due,
        }


def _residual(expires: datetime, now: datetime) -> int:
    return int((expires - now).total_seconds() // 86400)


def expiry_rows(state: State, config: Config, now: datetime) -> list[ExpiryRow]:
    """One row per certificate and CA generation in the state, soonest first."""
    hosts: dict[str, set[str]] = defaultdict(set)
    for record in state.resources.values():
        if record.kind == "file" and record.outputs.get("host"):
            hosts[record.outputs.get("source", "")].add(record.outputs["host"])
    embedded: dict[str, str] = {
        str(spec.address): str(spec["client"])
        for spec in config.resources.values() if spec.kind == "kubeconfig"
    }
    for spec in config.resources.values():
        if spec.kind == "file" and spec.host is not None:
            source = str(spec["source"])
            hosts[source].add(spec.host.name)
            if source in embedded:  # a kubeconfig file carries its client cert
                hosts[embedded[source]].add(spec.host.name)
    rows = []
    for address, record in state.resources.items():
        if record.kind not in ("cert", "ca") or not record.outputs.get("not_after"):
            continue
        spec = config.resources.get(_parse(address))
        renew = (spec.get("renew_before_days") if spec else None) or \
            config.settings.renew_before_days
        expires = datetime.fromisoformat(record.outputs["not_after"].replace("Z", "+00:00"))
        rows.append(ExpiryRow(
            address=address,
            kind=record.kind,
            expires=expires,
            residual_days=_residual(expires, now),
            signer=record.outputs.get("signer") or "(self-signed)",
            hosts=tuple(sorted(hosts.get(address, ()))),
            renew_before_days=int(renew),
        ))
    return sorted(rows, key=lambda r: (r.expires, r.address))


def _parse(address: str):
    from pkiform.address import Address

    return Address.parse(address)


def render_expiry(rows: list[ExpiryRow]) -> str:
    if not rows:
        return "No certificates in the state yet (run pkiform apply).\n"
    header = ("RESOURCE", "EXPIRES", "RESIDUAL TIME", "SIGNER", "HOSTS")
    table = [header]
    for row in rows:
        residual = f"{row.residual_days}d" if row.residual_days >= 0 else "EXPIRED"
        if row.due and row.residual_days >= 0:
            residual += " (renew due)"
        table.append((row.address, row.expires.strftime("%b %d, %Y %H:%M UTC"), residual,
                      row.signer, ",".join(row.hosts) or "-"))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() + "\n"
        for line in table
    )
