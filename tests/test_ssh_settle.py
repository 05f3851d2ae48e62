"""The settle window of an SSH restart, without a host: `_exec` answers as systemd would.

The window is on the critical path of every rolling group (members restart one after
another), so its looks are scheduled on a fixed grid and none starts in the last half poll:
a slow look must not push the one that ends the window past its deadline. Still, that last
look never starts before the deadline, and a unit that died or was restarted in between fails.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pkiform.errors import ServiceError
from pkiform.model import Host
from pkiform.transport import ssh
from pkiform.transport.ssh import SETTLE_POLL, SshTransport


class Unit:
    """A unit as `systemctl show` reports it; each look takes ``slow[n]`` seconds (n-th)."""

    def __init__(self, slow: dict[int, float] | None = None, dies_at: float | None = None,
                 replaced_at: float | None = None) -> None:
        self.slow = slow or {}
        self.dies_at = dies_at
        self.replaced_at = replaced_at
        self.looks: list[tuple[float, float]] = []  # (started, ended), from time.monotonic()

    def exec(self, script: str, args: Sequence[str] = (), **_: object) -> tuple[int, str, str]:
        assert script == ssh._UNIT_SCRIPT
        started = time.monotonic()
        time.sleep(self.slow.get(len(self.looks), 0.0))
        self.looks.append((started, time.monotonic()))
        elapsed = started - self.origin
        state, invocation = "active", "abc"
        if self.dies_at is not None and elapsed >= self.dies_at:
            state = "failed"
        if self.replaced_at is not None and elapsed >= self.replaced_at:
            invocation = "def"
        if len(args) > 1:  # the journal, after a failure
            return 0, "ActiveState=failed\nmain process exited, status=3\n", ""
        return 0, f"ActiveState={state}\nInvocationID={invocation}\nNRestarts=0\n", ""


def settle(unit: Unit, window: float) -> float:
    transport = SshTransport(Host("h", "127.0.0.1", transport="ssh"), base_dir=Path("/"))
    transport._exec = unit.exec  # type: ignore[method-assign]
    unit.origin = time.monotonic()  # type: ignore[attr-defined]
    transport._settle("x.service", "restart", "abc", "0", window)
    return unit.origin  # type: ignore[attr-defined, no-any-return]


def test_a_slow_look_does_not_push_the_last_one_past_the_deadline() -> None:
    # Looks 2 and 3 take 0.22 s and 0.2 s. Sleeping a poll after each look (the old schedule)
    # started look 3 at ~0.97 s, just before the deadline, and the last one at ~1.17 s.
    unit = Unit(slow={1: 0.22, 2: 0.2})
    origin = settle(unit, 1.0)
    last_started = unit.looks[-1][0] - origin
    assert last_started >= 1.0  # the window is whole: nothing is cut short
    assert last_started < 1.1, [round(a - origin, 2) for a, _ in unit.looks]
    assert all(start - origin < 1.0 - SETTLE_POLL / 2 for start, _ in unit.looks[:-1])


def test_looks_stay_on_the_grid() -> None:
    unit = Unit()
    origin = settle(unit, 1.0)
    starts = [round(start - origin, 2) for start, _ in unit.looks]
    assert len(starts) == 4 and starts[-1] >= 1.0, starts
    for k, start in enumerate(starts[:-1], start=1):
        assert k * SETTLE_POLL <= start < k * SETTLE_POLL + 0.1, starts


@pytest.mark.parametrize(("unit", "why"), [
    (Unit(dies_at=0.6), "state=failed"),
    (Unit(dies_at=0.95), "state=failed"),  # after the last grid look: the last look sees it
    (Unit(replaced_at=0.3), "restarted by systemd in between"),
])
def test_a_unit_that_goes_down_in_the_window_fails(unit: Unit, why: str) -> None:
    with pytest.raises(ServiceError, match="went down again") as excinfo:
        settle(unit, 1.0)
    assert why in str(excinfo.value)


def test_a_zero_window_looks_once() -> None:
    unit = Unit()
    settle(unit, 0.0)
    assert len(unit.looks) == 1
