"""Run `pkiform apply` and SIGKILL the process at a chosen point (for the crash tests).

usage: python -m tests.crash.runner DIR MODE K

MODE says where the k-th event dies:
  journal-before  before the k-th step is journaled (its effect done, not recorded)
  journal-mid     half-way through writing the k-th journal line
  journal-after   right after the k-th journal line is written and synced
  write-mid       half-way through the k-th file write (temp file partly written)
  commit          inside the final state save, after the temp file, before the rename
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    directory, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from pkiform.state import store as store_module
    from pkiform.transport import local

    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == k

    original_append = store_module.StateStore.journal_append

    def journal_append(self, base, address, record, secrets, **kwargs):  # type: ignore[no-untyped-def]
        if hit():
            if mode == "journal-before":
                die()
            if mode == "journal-mid":
                with open(self.journal_path, "ab") as handle:
                    handle.write(b'{"lineage": "' + base.lineage.encode()[:10])
                    handle.flush()
                    os.fsync(handle.fileno())
                die()
            original_append(self, base, address, record, secrets, **kwargs)
            if mode == "journal-after":
                self.journal_sync()
                die()
            return
        original_append(self, base, address, record, secrets, **kwargs)

    original_write = local.LocalTransport.write_file

    def write_file(self, path, content, **kwargs):  # type: ignore[no-untyped-def]
        if mode == "write-mid" and hit():
            target = self.local_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.crash.pkiform-tmp")
            partial.write_bytes(content[: len(content) // 2])
            die()
        original_write(self, path, content, **kwargs)

    original_atomic = store_module.write_atomically

    def write_atomically(path: Path, data: bytes, mode_bits: int = 0o600) -> None:
        if mode == "commit" and path.name == store_module.STATE_FILE:
            tmp = path.with_name(f".{path.name}.crash.tmp")
            tmp.write_bytes(data)
            die()
        original_atomic(path, data, mode_bits)

    if mode.startswith("journal"):
        store_module.StateStore.journal_append = journal_append  # type: ignore[method-assign]
    elif mode == "write-mid":
        local.LocalTransport.write_file = write_file  # type: ignore[method-assign]
    elif mode == "commit":
        store_module.write_atomically = write_atomically  # type: ignore[assignment]

    from pkiform.cli import main as cli_main

    raise SystemExit(cli_main(["-C", directory, "apply", "--auto-approve"]))


if __name__ == "__main__":
    main()
