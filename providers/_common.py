"""Pieces the built-in kinds share: field sets, input snapshots, diff wording, digests."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pkiform.address import Address
from pkiform.config.values import check_dns_name, check_ip
from pkiform.errors import ConfigError, PkiError
from pkiform.model import Config, ResourceSpec
from pkiform.pki.keys import KEY_ALGORITHMS
from pkiform.provider import Field

KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "cert_sign", "crl_sign",
)
EXTENDED_KEY_USAGES = (
    "server_auth", "client_auth", "code_signing", "email_protection", "time_stamping",
    "ocsp_signing",
)
MAX_VALIDITY_DAYS = 36500


def key_field(default: str = "rsa-2048") -> Field:
    return Field("str", default=default, choices=KEY_ALGORITHMS,
                 doc="key algorithm (RSA >= 2048, ECDSA P-256/P-384, Ed25519)")


SUBJECT_FIELDS: Mapping[str, Field] = {
    "common_name": Field("str", doc="subject CN"),
    "organizations": Field("list[str]", default=(), doc="subject O list (RBAC groups)"),
    "validity_days": Field("int", doc="lifetime in days"),
    "renew_before_days": Field("int", doc="renew when it expires within this many days"),
}


def digest(value: bytes | str) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


# Types normalize returns as they are: most spec values (a 5,000-node plan normalizes
# 170,000 of them, so the common case skips the isinstance chain and its ABC check).
_PLAIN = frozenset({str, int, bool, float, type(None)})


def normalize(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in sorted(value.items()) if v is not None}
    return value


def snapshot(spec: ResourceSpec, fields: Mapping[str, Field], skip: Sequence[str] = ()) -> dict:
    """The config inputs recorded in state and compared on the next plan."""
    attributes = spec.attributes
    values = {}
    for name in _sorted_names(tuple(fields)):
        value = attributes.get(name)
        if value is not None and name not in skip:
            values[name] = value if type(value) in _PLAIN else normalize(value)
    return values


@functools.lru_cache(maxsize=128)
def _sorted_names(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(names))


def describe_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Human reasons for config differences: "SAN added: 10.0.0.5", "validity_days 365 → 90"."""
    if before == after:  # the usual case, and one C-level comparison
        return []
    reasons: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        label = {"dns_names": "DNS SAN", "ip_addresses": "IP SAN"}.get(key, key)
        if isinstance(old, list) or isinstance(new, list):
            old_set, new_set = set(old or ()), set(new or ())
            added, removed = sorted(new_set - old_set), sorted(old_set - new_set)
            if added:
                reasons.append(f"{label} added: {', '.join(map(str, added))}")
            if removed:
                reasons.append(f"{label} removed: {', '.join(map(str, removed))}")
            if not added and not removed:
                reasons.append(f"{label} reordered")
        else:
            reasons.append(f"{label}: {old!r} → {new!r}")
    return reasons


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expiry_reason(not_after: str | None, now: datetime, renew_before_days: int) -> str | None:
    if not not_after:
        return None
    end = parse_time(not_after)
    if end - now <= timedelta(days=renew_before_days):
        if end <= now:
            return f"expired {end:%Y-%m-%d}"
        return f"expires {end:%Y-%m-%d}, within {renew_before_days} days"
    return None


def check_x509_fields(spec: ResourceSpec, *, leaf: bool) -> None:
    where = {"file": spec.origin, "address": str(spec.address)}
    validity = spec.get("validity_days")
    if validity is not None and not 0 < validity <= MAX_VALIDITY_DAYS:
        raise ConfigError(
            f"validity_days must be between 1 and {MAX_VALIDITY_DAYS}, not {validity}",
            hint="pick e.g. 365 for leaves, 3650 for CAs", **where)
    renew = spec.get("renew_before_days")
    if renew is not None and not 0 <= renew < (validity or MAX_VALIDITY_DAYS):
        raise ConfigError(f"renew_before_days {renew} must be >= 0 and below validity_days",
                          hint="pick e.g. 30", **where)
    for name in spec.get("dns_names") or ():
        check_dns_name(name, field="dns_names", **where)
    for ip in spec.get("ip_addresses") or ():
        check_ip(ip, field="ip_addresses", **where)
    for usage in spec.get("key_usages") or ():
        if usage not in KEY_USAGES:
            raise ConfigError(f"unknown key usage {usage!r}",
                              hint=f"use: {', '.join(KEY_USAGES)}", **where)
    for usage in spec.get("extended_key_usages") or ():
        if usage not in EXTENDED_KEY_USAGES:
            raise ConfigError(f"unknown extended key usage {usage!r}",
                              hint=f"use: {', '.join(EXTENDED_KEY_USAGES)}", **where)
    cn = spec.get("common_name")
    if cn is not None and not 0 < len(cn) <= 64:
        raise ConfigError("common_name must be 1 to 64 characters (X.509 upper bound)",
                          hint="shorten it", **where)


def check_signer_validity(spec: ResourceSpec, config: Config) -> None:
    """A certificate may not outlive the CA that signs it."""
    signer = spec.get("signer")
    if signer is None:
        return
    signer_spec = config.resources.get(signer)
    if signer_spec is None:
        return
    mine, theirs = spec.get("validity_days"), signer_spec.get("validity_days")
    if mine is not None and theirs is not None and mine > theirs:
        raise ConfigError(
            f"validity_days {mine} is beyond its signer {signer}'s {theirs}",
            file=spec.origin, address=str(spec.address),
            hint=f"lower validity_days to at most {theirs}, or lengthen the CA's",
        )


def clamp_validity(days: int, issuer_cert_pem: bytes, now: datetime, signer: str) -> int:
    """A certificate may not outlive its signer: near the signer's end, issue a shorter one.

    (The plan rotates a CA inside its own renew window, so this only shortens leaves renewed
    while their CA is itself about to be replaced.)
    """
    from pkiform.pki.certs import describe_certificate

    end = describe_certificate(issuer_cert_pem).not_after
    remaining = (end - now).days
    if remaining < 1:
        raise PkiError(f"signer {signer} expires {end:%Y-%m-%d}: it must be rotated before it "
                       "can sign", hint=f"pkiform apply --replace {signer}")
    return min(days, remaining)


def is_root(cert_pem: bytes) -> bool:
    """Self-signed: a trust anchor, left out of the chains pkiform deploys."""
    from pkiform.pki.certs import describe_certificate

    info = describe_certificate(cert_pem)
    return info.subject == info.issuer and info.subject_key_id_hex == (
        info.authority_key_id_hex or info.subject_key_id_hex)
