"""Fixtures for the lab tests: real systemd + sshd hosts on 127.0.1.x (see ``hosts.py``).

``lab_hosts`` is a module-scoped factory. ``lab_hosts(n)`` boots a :class:`~tests.lab.hosts.Lab`
of ``n`` hosts (``lab-1`` … ``lab-n``) the first time a test module asks for it, and returns
that same Lab to later calls with the same arguments in the same module, so a module boots
its hosts once and its tests share them. Keyword arguments go to ``Lab`` (``mask_units``,
``boot_timeout``, …); other arguments boot another Lab. Every Lab it booted is torn down
when the module is done — also when a test fails, the boot fails, or on Ctrl-C (the Lab
itself also covers SIGTERM and a killed test process). When ``lab_supported()`` gives a
reason, the requesting test is skipped with it. A boot that fails (e.g. a host comes up
"degraded" because a unit timed out while the machine was busy) is retried once, with the
first failure reported as a warning; a second failure errors the tests that asked.

Typical use (tests still mark themselves, the fixture cannot)::

    pytestmark = pytest.mark.lab

    @pytest.fixture(scope="module")
    def lab(lab_hosts):
        return lab_hosts(3)

    def test_something(lab):
        lab.host("lab-1").run("systemctl is-system-running")

The Lab gives ``lab.hosts``, ``lab.host(name)``, ``lab.key_path`` (root's SSH key for every
host), ``lab.known_hosts_path`` and ``lab.ssh_config_path``; hosts are booted from the
pytest main thread, which they must not outlive (see ``Lab``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .hosts import Lab, LabError, lab_supported

LabFactory = Callable[..., Lab]


@pytest.fixture(scope="module")
def lab_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFactory]:
    labs: dict[tuple[Any, ...], Lab] = {}

    def boot(n: int = 3, **kwargs: Any) -> Lab:
        reason = lab_supported()
        if reason is not None:
            pytest.skip(f"lab hosts are not supported here: {reason}")
        key = (n, *sorted((k, repr(v)) for k, v in kwargs.items()))
        lab = labs.get(key)
        if lab is None:
            try:
                lab = Lab(n, tmp_path_factory.mktemp("lab"), **kwargs).start()
            except LabError as exc:  # start() tore the failed lab down already
                warnings.warn(f"lab boot failed, retrying once: {exc}", stacklevel=2)
                lab = Lab(n, tmp_path_factory.mktemp("lab"), **kwargs).start()
            labs[key] = lab
        return lab

    try:
        yield boot
    finally:
        errors = []
        for lab in labs.values():
            try:
                lab.close()
            except Exception as exc:  # close every lab, then report
                errors.append(str(exc))
        if errors:
            raise RuntimeError("lab teardown failed:\n" + "\n".join(errors))
