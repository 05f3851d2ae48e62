"""``service``: a systemd unit on a host, restarted when a file it uses changes.

Rolling groups (``max_unavailable = 1``: etcd members, apiservers) restart one host at a time:
the next member waits until the last one is active and has passed its health check (or, with
no health check, stayed up for the settle window; see ``settle_window``). A service may also
name the TLS endpoint it serves and the cert it should be serving: plan then reads what the
process actually presents and plans a restart when it still serves an old certificate
(deployed but never loaded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, ResourceSpec
from pkiform.provider import (
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
from pkiform.providers import _common as common
from pkiform.transport.base import HealthCheck, settle_window

UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|target|timer)$")


class ServiceProvider:
    kind: ClassVar[str] = "service"
    per_host: ClassVar[bool] = True
    fields: ClassVar[Mapping[str, Field]] = {
        "unit": Field("str", required=True, doc="systemd unit, e.g. kube-apiserver.service"),
        "uses": Field("list[ref]", default=(), ref_kinds=("file",),
                      doc="files whose change restarts it"),
        "reload": Field("bool", default=False, doc="systemctl reload instead of restart"),
        "max_unavailable": Field("int", doc="1: restart the group one host at a time"),
        "health_command": Field("str", doc="command on the host that exits 0 when healthy"),
        "health_url": Field("str", doc="https URL that answers when healthy"),
        "health_timeout": Field("int", default=60, doc="seconds to wait for health"),
        "settle_seconds": Field("int", doc="seconds a restarted unit must stay up (after its "
                                "health check, if any) before the next step (default 1 without "
                                "a health check, 0 with one; raise it for units that die late)"),
        "tls_endpoint": Field("str", doc="host:port it serves TLS on (loaded-cert check)"),
        "serving_cert": Field("ref", ref_kinds=("cert",), doc="cert it should be serving"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {}
    create_action: ClassVar[Action] = Action.RESTART  # a unit is restarted, never created

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        refs = [Ref(f, "content") for f in spec.get("uses") or ()]
        return refs

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        where = {"file": spec.origin, "address": str(spec.address)}
        if not UNIT_RE.fullmatch(spec["unit"]):
            raise ConfigError(f"unit {spec['unit']!r} is not a systemd unit name",
                              hint="e.g. etcd.service", **where)
        max_unavailable = spec.get("max_unavailable")
        if max_unavailable is not None and max_unavailable < 1:
            raise ConfigError("max_unavailable must be at least 1", hint="use 1 for quorum "
                              "groups such as etcd", **where)
        settle = spec.get("settle_seconds")
        if settle is not None and not 0 <= settle <= 600:
            raise ConfigError("settle_seconds must be between 0 and 600",
                              hint="e.g. 2 for a unit that can die a second after starting",
                              **where)
        if not 1 <= spec["health_timeout"] <= 3600:
            raise ConfigError("health_timeout must be between 1 and 3600 seconds",
                              hint="e.g. 60", **where)
        url = spec.get("health_url")
        if url and not re.fullmatch(r"https?://[^\s]+", url):
            raise ConfigError(f"health_url {url!r} is not an http(s) URL", hint="e.g. "
                              "https://127.0.0.1:2379/health", **where)
        if bool(spec.get("tls_endpoint")) != bool(spec.get("serving_cert")):
            raise ConfigError("tls_endpoint and serving_cert go together",
                              hint="set both or neither", **where)
        for used in spec.get("uses") or ():
            used_spec = config.resources.get(used)
            if used_spec is not None and used_spec.host and spec.host and (
                used_spec.host.name != spec.host.name
            ):
                raise ConfigError(f"{used} lives on {used_spec.host.name}, not on "
                                  f"{spec.host.name}", hint="a service uses files on its own "
                                  "host", **where)

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        values = common.snapshot(spec, self.fields, skip=("uses",))
        values["host"] = spec.host.name if spec.host else ""
        return values

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if request.changed_dependencies:
            files = sorted({str(ref.address) for ref in request.changed_dependencies})
            decision = Decision(Action.RESTART, tuple(f"{f} changed" for f in files))
        if prior is not None and prior.inputs.get("unit") != self.inputs(request.spec)["unit"]:
            decision = decision.merge(Decision(Action.RESTART, ("unit changed",)))
        observed = request.observation
        if observed is not None and observed.serving_fingerprint is not None and prior:
            # Compare with the certificate deployed now, not the one loaded at the last
            # restart: a process that hot-reloads its cert (etcd) is not serving an old one.
            wanted = observed.expected_fingerprint or prior.outputs.get("serving_fingerprint")
            if wanted and observed.serving_fingerprint != wanted:
                decision = decision.merge(Decision(Action.RESTART, (
                    "serving an old certificate (deployed but not loaded)",)))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("restart", "apply", Action.RESTART, frozenset(), "restart")]

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        return []

    def expected_seconds(self, spec: ResourceSpec, action: Action) -> float:
        """For the apply's scheduler: a restart takes its settle window and a few round
        trips (a health check, if any, a few polls more), so the chain of a rolling group
        is the longest in a deploy and starts first."""
        has_health = bool(spec.get("health_command") or spec.get("health_url"))
        settle = spec.get("settle_seconds")
        seconds = settle_window(None if settle is None else float(settle), has_health) + 0.1
        if has_health:
            seconds += 0.3
        return seconds

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec, ctx = request.spec, request.context
        assert spec.host is not None
        health = None
        if spec.get("health_command") or spec.get("health_url"):
            health = HealthCheck(spec.get("health_command"), spec.get("health_url"),
                                 float(spec["health_timeout"]))
        transport = ctx.host_transport(spec.host)
        settle = spec.get("settle_seconds")
        outcome = transport.restart_service(spec["unit"], reload=spec["reload"], health=health,
                                            timeout=float(spec["health_timeout"]),
                                            settle=None if settle is None else float(settle))
        outputs: dict[str, Any] = {
            "host": spec.host.name,
            "unit": spec["unit"],
            "last": outcome.detail,
            "restarted": outcome.performed,
        }
        serving = spec.get("serving_cert")
        if serving is not None:
            from pkiform.pki.certs import describe_certificate

            outputs["serving_fingerprint"] = describe_certificate(
                ctx.value(Ref(serving, "cert"))).fingerprint_sha256
        action = "reload" if spec["reload"] else "restart"
        return ResourceResult(outputs, {}, {}, f"{action} {spec['unit']} on {spec.host.name}: "
                              f"{outcome.detail}")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        raise KeyError(name)

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten (the unit itself is not touched)"
