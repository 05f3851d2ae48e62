"""One pure computation in a forked child process while this process goes on.

A plan and its trust proof's baseline (which edges already fail before the plan) need the same
inputs, the loaded config and state, but not each other's results, and both are mostly pure
Python. Threads would take turns on the GIL; a forked child gets the loaded objects for free
(copy-on-write) and runs on another core, then sends back a small pickled result. At 5,000
nodes that takes the baseline (about a second of CPU) off the plan's critical path.

Forking is only done where it is safe: on a platform with ``fork`` and while this process has
no other thread (a thread holding a lock at fork time would leave it locked in the child).
Everything else — no fork, a crashed or killed child, an unpicklable result — reports None,
and the caller computes the result itself: the child can make things faster, never different.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Set (to anything) to never fork: the computation then runs in-process, as without a child.
NO_FORK_ENV = "PKIFORM_NO_FORK"


def die_with_parent(parent: int) -> None:
    """Make this (child) process end when ``parent`` does: a killed pkiform must not leave
    workers behind holding its pipes open."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child ends when its work does
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


class Forked(Generic[T]):
    """``compute()`` running in a forked child; `result` waits for it."""

    def __init__(self, pid: int, reader: int) -> None:
        self._pid = pid
        self._reader = reader
        self._done = False

    @classmethod
    def start(cls, compute: Callable[[], T]) -> Forked[T] | None:
        """Fork a child that runs ``compute``; None when forking is not possible or not safe
        here (the caller then computes in-process when it needs the result)."""
        if os.environ.get(NO_FORK_ENV) or not hasattr(os, "fork"):
            return None
        if threading.active_count() > 1:
            return None
        parent = os.getpid()
        reader, writer = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(reader)
            os.close(writer)
            return None
        if pid == 0:  # the child: compute, send, and leave without running any cleanup
            status = 1
            try:
                os.close(reader)
                # Ctrl-C reaches the whole process group: the parent handles it.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                die_with_parent(parent)
                payload = pickle.dumps(compute(), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(writer, "wb") as out:
                    out.write(payload)
                status = 0
            except BaseException:  # the parent falls back; never unwind here
                pass
            finally:
                os._exit(status)
        os.close(writer)
        return cls(pid, reader)

    def result(self) -> T | None:
        """The child's result, or None if it failed (the caller computes it in-process)."""
        if self._done:
            raise RuntimeError("result() was already taken")
        self._done = True
        try:
            with os.fdopen(self._reader, "rb") as source:
                payload = source.read()
        finally:
            status = self._reap()
        if status != 0 or not payload:
            return None
        try:
            return pickle.loads(payload)  # our own child, over a private pipe
        except Exception:  # a truncated payload: a failed child
            return None

    def cancel(self) -> None:
        """Stop the child if its result is no longer wanted (idempotent)."""
        if self._done:
            return
        self._done = True
        try:
            os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self._reader)
        self._reap()

    def _reap(self) -> int:
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            return -1
        return os.waitstatus_to_exitcode(status)

    def __del__(self) -> None:
        # A Forked dropped without result() (an exception in the parent): no zombie, no child.
        if not getattr(self, "_done", True):
            self.cancel()
