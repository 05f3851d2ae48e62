"""Every error pkiform raises on purpose.

One root (`PkiformError`) so callers can catch "pkiform said no" in one place; each subclass
also inherits the built-in it resembles so generic code (``except ValueError``) keeps working.
The CLI turns any `PkiformError` into one clear message and exit code 1, never a traceback.
"""

from __future__ import annotations


class PkiformError(Exception):
    """Root of every error pkiform raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class ConfigError(PkiformError, ValueError):
    """The configuration is invalid. Names the file, the resource address and the fix."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        address: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ": ".join(p for p in (file, address) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.address = address


class DependencyCycleError(ConfigError):
    """Resources depend on each other in a circle; ``cycle`` lists it, first node repeated."""

    def __init__(self, cycle: list[object], *, file: str | None = None) -> None:
        # Edges point dependency → dependent; printed as "depends on", hence reversed.
        shown = cycle[::-1]
        super().__init__(
            "dependency cycle (→ means depends on): " + " → ".join(map(str, shown)),
            file=file, address=str(shown[0]),
            hint="remove one of these references; a resource cannot depend on itself")
        self.cycle = shown


class PkiError(PkiformError, ValueError):
    """A key, certificate or rendering input is invalid."""


class StateError(PkiformError, RuntimeError):
    """The state file is missing, unreadable, corrupt, of another version or lineage."""


class StateLockedError(StateError):
    """Another process holds the state lock."""


class SecretKeyError(StateError):
    """The state key is missing or wrong, or a ciphertext failed authentication."""


class PlanError(PkiformError, RuntimeError):
    """A plan cannot be made or cannot be applied (stale, tampered, refused by a proof)."""


class StalePlanError(PlanError):
    """A saved plan no longer matches the state it was made against."""


class TrustProofError(PlanError):
    """A planned rotation would break a declared TLS edge between two phases."""


class TransportError(PkiformError, OSError):
    """A host could not be read from or written to."""

    def __init__(self, message: str, *, host: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{host}: {message}" if host else message, hint=hint)
        self.host = host


class HostKeyError(TransportError):
    """A host's SSH key is unknown or changed; nothing is silently accepted."""


class ServiceError(TransportError):
    """A unit failed to restart or its health check failed."""


class ApplyError(PkiformError, RuntimeError):
    """Apply finished with failed steps (details are in the events and the state)."""
