"""How pkiform reaches a host: the `Transport` protocol and its implementations.

``local`` writes under a directory on this machine (no service manager: restarts are reported
as skipped); ``ssh`` (`pkiform.transport.ssh`, the only module that imports fabric) pushes
files over SSH and drives systemd. The engine only ever sees the protocol.
"""

from pkiform.transport.base import FileStat, HealthCheck, RestartOutcome, Transport

__all__ = ["FileStat", "HealthCheck", "RestartOutcome", "Transport"]
