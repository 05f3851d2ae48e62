"""``pkiform``: the command line. Terraform users should feel at home.

Every `PkiformError` becomes one message on stderr and exit code 1; anything else is a bug and
still gets a one-line message (and the traceback only with PKIFORM_DEBUG=1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TextIO

from pkiform import __version__
from pkiform.address import Address
from pkiform.apply import ApplyResult, Event, KeySource, key_requests
from pkiform.errors import ConfigError, PkiformError
from pkiform.plan import Plan
from pkiform.provider import Action
from pkiform.render import SYMBOLS, Style, plan_json, render_plan, render_record
from pkiform.workspace import Workspace

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 5m)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkiform",
        description="Plan and apply the PKI of a Kubernetes cluster on VMs or bare metal.",
    )
    parser.add_argument("-C", "--chdir", metavar="DIR", default=".",
                        help="directory holding pkiform.toml (default: current)")
    parser.add_argument("--version", action="version", version=f"pkiform {__version__}")
    parser.add_argument("--no-color", action="store_true", help="plain output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("validate", help="check the configuration")
    sub.add_parser("init", help="create the state key (and state directory)")

    def planning(p: argparse.ArgumentParser) -> None:
        p.add_argument("--replace", action="append", default=[], metavar="ADDR",
                       help="force replacement (a CA: rotation) of ADDR; repeatable")
        p.add_argument("--rotation", choices=("zero-downtime", "immediate"),
                       help="how CAs and keys are rotated (default: settings.rotation)")
        p.add_argument("--refresh", type=_bool, default=True, metavar="BOOL",
                       help="read files on hosts to detect drift (default true)")
        p.add_argument("--at", type=_date, metavar="DATE",
                       help="plan as if it were DATE (what expiry forces by then)")

    plan = sub.add_parser("plan", help="show what apply would do")
    planning(plan)
    plan.add_argument("--out", metavar="FILE", help="save the plan for apply")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 no changes, 2 changes, 1 error")

    apply = sub.add_parser("apply", help="carry out a plan")
    planning(apply)
    apply.add_argument("planfile", nargs="?", help="a plan saved with plan --out")
    apply.add_argument("--auto-approve", action="store_true", help="do not ask")
    apply.add_argument("--parallelism", type=int, metavar="N", help="hosts served at once")
    apply.add_argument("--lock-timeout", type=_duration, default=0.0, metavar="DURATION",
                       help="wait this long for the state lock (default: fail at once)")

    show = sub.add_parser("show", help="show a saved plan, or the state")
    show.add_argument("planfile", nargs="?")
    show.add_argument("--json", action="store_true")

    sub.add_parser("graph", help="the dependency graph in DOT")

    expiry = sub.add_parser("expiry", help="certificate expiry table")
    expiry.add_argument("--json", action="store_true")
    expiry.add_argument("--at", type=_date, metavar="DATE")

    unlock = sub.add_parser("force-unlock", help="remove a stale state lock")
    unlock.add_argument("lock_id", metavar="ID")

    state = sub.add_parser("state", help="inspect the state")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="SUBCOMMAND")
    state_sub.add_parser("list", help="every address in the state")
    state_show = state_sub.add_parser("show", help="one resource (secrets never shown)")
    state_show.add_argument("address")
    state_sub.add_parser("rekey", help="re-encrypt the state under a new key")
    return parser


class ProgressHook:
    """Prints one line per finished step; a live counter on a TTY."""

    def __init__(self, out: TextIO, style: Style, total: int, live: bool) -> None:
        self.out = out
        self.style = style
        self.total = total
        self.finished = 0
        self.live = live
        self.lock = threading.Lock()
        self.per_host: dict[str, dict[str, int]] = {}

    def __call__(self, event: Event) -> None:
        with self.lock:
            if event.kind == "phase":
                self._clear()
                self.out.write(self.style.bold(f"\n== phase {event.phase}: {event.message}")
                               + "\n")
            elif event.kind in ("done", "failed", "skipped") and event.change is not None:
                self.finished += 1
                change = event.change
                host = change.host or "-"
                tally = self.per_host.setdefault(host, {"done": 0, "failed": 0, "skipped": 0})
                tally[event.kind] += 1
                _symbol, word, _code = SYMBOLS[change.action]
                mark = {"done": self.style("✓", "32"), "failed": self.style("✗", "31"),
                        "skipped": self.style("–", "33")}[event.kind]
                detail = f"  {event.message}" if event.message else ""
                self._clear()
                self.out.write(f"{mark} {word:<7} {change.address}  [{host}]"
                               f"  {event.duration:.2f}s{detail}\n")
                if self.live:
                    self.out.write(f"  {self.finished}/{self.total} steps…\r")
            if self.live or event.kind in ("phase", "failed", "finished"):
                self.out.flush()  # a pipe or file gets buffered output, a TTY live lines

    def _clear(self) -> None:
        if self.live:
            self.out.write("\033[2K\r")

    def summary(self) -> str:
        lines = ["Per host:"]
        for host, tally in sorted(self.per_host.items()):
            lines.append(f"  {host:<20} done {tally['done']:>4}  failed {tally['failed']:>3}"
                         f"  skipped {tally['skipped']:>3}")
        return "\n".join(lines)


class Cli:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        color = (not args.no_color and "NO_COLOR" not in os.environ
                 and hasattr(out, "isatty") and out.isatty())
        self.style = Style(color)
        self._workspaces: list[Workspace] = []

    def workspace(self) -> Workspace:
        # Loading, planning and proving allocate about a million objects at 5,000 nodes and
        # almost none of them in reference cycles: the cyclic collector's full passes over
        # them cost a fifth of a no-op plan's CPU and freed 5 objects. Reference counting
        # still frees everything else as usual; `_resume_gc` turns the collector back on.
        gc.disable()
        ws = Workspace(self.args.chdir)
        self._workspaces.append(ws)
        return ws

    def close(self) -> None:
        """Close what the command opened: SSH connections say goodbye to their hosts (sshd
        logs a disconnect, not a reset) instead of being dropped at interpreter exit."""
        while self._workspaces:
            self._workspaces.pop().close()

    def notice(self, ws: Workspace) -> None:
        if ws.store.notice:
            self.err.write(f"pkiform: {ws.store.notice}\n")
            ws.store.notice = None

    # -- commands ------------------------------------------------------------------------

    def cmd_validate(self) -> int:
        ws = self.workspace()
        count = len(ws.config.resources)
        self.out.write(f"Success! The configuration is valid ({count} resources, "
                       f"{len(ws.config.hosts)} hosts, {len(ws.config.tls_edges)} tls edges).\n")
        return EXIT_OK

    def cmd_init(self) -> int:
        ws = self.workspace()
        state = ws.store.load(decrypt=False)
        if not ws.store.exists():
            ws.store.save(state)
        ws.store.key_for(state.lineage, create=True)
        self.notice(ws)
        self.out.write(f"State directory {ws.store.directory} ready "
                       f"(lineage {state.lineage}).\n")
        return EXIT_OK

    def _make_plan(self, ws: Workspace, keys: KeySource | None = None) -> tuple[Plan, object]:
        args = self.args
        plan = ws.plan(replace=args.replace, mode=args.rotation, at=args.at,
                       refresh=args.refresh, prove_ahead=True)
        if keys is not None:
            # Keygen (most of an apply from empty) runs while the plan is proven and shown.
            keys.request(key_requests(plan, ws.registry))
        proof = self._prove(ws, plan)
        return plan, proof

    def _prove(self, ws: Workspace, plan: Plan) -> object:
        try:
            from pkiform import trust
        except ImportError:
            return None
        return trust.prove_plan(ws, plan)

    def cmd_plan(self) -> int:
        ws = self.workspace()
        plan, proof = self._make_plan(ws)
        if self.args.json:
            self.out.write(plan_json(plan, proof))
        else:
            self.out.write(render_plan(plan, color=self.style.color, proof=proof))
        if self.args.out:
            from pkiform.planfile import save_plan

            key = ws.store.key_for(plan.lineage, create=True)
            save_plan(plan, Path(self.args.out), key)
            self.notice(ws)
            if not self.args.json:
                self.out.write(f"\nSaved the plan to {self.args.out}. Apply exactly it with:\n"
                               f"  pkiform -C {self.args.chdir} apply {self.args.out}\n")
        if self.args.detailed_exitcode and not plan.is_empty:
            return EXIT_CHANGES
        return EXIT_OK

    def cmd_apply(self) -> int:
        # The keygen pool forks now, while this process has no threads yet (refresh and the
        # proof start some); it idles until the plan asks for keys, and is closed on any exit.
        keys = KeySource()
        try:
            return self._apply(keys)
        finally:
            keys.close()

    def _apply(self, keys: KeySource) -> int:
        args = self.args
        ws = self.workspace()
        if args.planfile:
            if args.replace or args.at:
                raise ConfigError("--replace/--at belong to the saved plan, not to apply",
                                  hint="make a new plan with those options")
            from pkiform.planfile import load_plan

            state = ws.store.load(decrypt=False)
            key = ws.store.key_for(state.lineage, create=False) if ws.store.exists() else None
            if key is None:
                key = self._key_for_empty_state(ws)
            plan = load_plan(Path(args.planfile), key)
            keys.request(key_requests(plan, ws.registry))
            proof = None
            self.out.write(render_plan(plan, color=self.style.color))
        else:
            plan, proof = self._make_plan(ws, keys)
            self.out.write(render_plan(plan, color=self.style.color, proof=proof))
            if plan.is_empty:
                return EXIT_OK
            if not args.auto_approve:
                if not sys.stdin.isatty():
                    raise ConfigError("apply needs confirmation but stdin is not a terminal",
                                      hint="review with pkiform plan, then run apply "
                                      "--auto-approve (or apply a saved plan file)")
                self.out.write("\nDo you want to perform these actions? Only 'yes' will be "
                               "accepted: ")
                self.out.flush()
                if sys.stdin.readline().strip() != "yes":
                    self.out.write("Apply cancelled.\n")
                    return EXIT_ERROR
        if plan.is_empty:
            return EXIT_OK
        total = sum(1 for c in plan.changes if c.action is not Action.NOOP)
        hook = ProgressHook(self.out, self.style, total, live=self.style.color)
        _resume_gc()
        result = ws.apply(plan, hooks=(hook,), parallelism=args.parallelism,
                          lock_timeout=args.lock_timeout, keys=keys)
        self.notice(ws)
        return self._report(result, hook)

    def _key_for_empty_state(self, ws: Workspace) -> object:
        # A plan made against an empty state is authenticated with the key created for the
        # lineage it recorded; find it through the plan file's lineage.
        document = json.loads(Path(self.args.planfile).read_text())
        lineage = json.loads(document["plan"])["lineage"]
        return ws.store.key_for(lineage, create=False)

    def _report(self, result: ApplyResult, hook: ProgressHook) -> int:
        self.out.write("\n" + hook.summary() + "\n")
        done, failed, skipped = len(result.done), len(result.failed), len(result.skipped)
        line = (f"Apply {'complete' if result.ok else 'incomplete'}! {done} done, {failed} "
                f"failed, {skipped} skipped in {result.duration:.1f}s "
                f"(state serial {result.state.serial}).")
        self.out.write(self.style.bold(line) + "\n")
        # One line per distinct error: a host that went down fails each of its steps with the
        # same words, which would otherwise repeat once per file.
        failed_by_reason: dict[str, list[str]] = {}
        for change, reason in result.failed:
            failed_by_reason.setdefault(str(reason), []).append(str(change.address))
        for reason, addresses in failed_by_reason.items():
            shown = ", ".join(addresses[:3])
            if len(addresses) > 3:
                shown += f" and {len(addresses) - 3} more"
            self.err.write(f"Error: {shown}: {reason}\n")
        if not result.ok:
            self.err.write("Run `pkiform apply` again to finish: completed steps are kept.\n")
            return EXIT_ERROR
        return EXIT_OK

    def cmd_show(self) -> int:
        ws = self.workspace()
        if self.args.planfile:
            from pkiform.planfile import load_plan

            state = ws.store.load(decrypt=False)
            try:
                key = ws.store.key_for(state.lineage, create=False)
            except PkiformError:
                key = self._key_for_empty_state(ws)  # type: ignore[assignment]
            plan = load_plan(Path(self.args.planfile), key)  # type: ignore[arg-type]
            self.out.write(plan_json(plan) if self.args.json
                           else render_plan(plan, color=self.style.color))
            return EXIT_OK
        state = ws.store.load(decrypt=False)
        if self.args.json:
            self.out.write(json.dumps({a: {"kind": r.kind, "outputs": dict(r.outputs)}
                                       for a, r in sorted(state.resources.items())},
                                      indent=2) + "\n")
        else:
            self.out.write(f"State serial {state.serial}, lineage {state.lineage}, "
                           f"{len(state.resources)} resources.\n")
            for address in sorted(state.resources):
                self.out.write(f"  {address}\n")
        return EXIT_OK

    def cmd_graph(self) -> int:
        ws = self.workspace()
        from pkiform.plan import Planner

        planner = Planner(ws.config, ws.store.load(decrypt=False), ws.registry)
        self.out.write("digraph pkiform {\n  rankdir=LR;\n")
        for address in planner.order:
            self.out.write(f'  "{address}";\n')
        for dep, dependent in sorted(planner.graph.edges):
            self.out.write(f'  "{dep}" -> "{dependent}";\n')
        self.out.write("}\n")
        return EXIT_OK

    def cmd_expiry(self) -> int:
        from pkiform.expiry import expiry_rows, render_expiry

        ws = self.workspace()
        rows = expiry_rows(ws.store.load(decrypt=False), ws.config,
                           self.args.at or datetime.now(UTC))
        if self.args.json:
            self.out.write(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        else:
            self.out.write(render_expiry(rows))
        return EXIT_OK

    def cmd_force_unlock(self) -> int:
        ws = self.workspace()
        holder = ws.store.force_unlock(self.args.lock_id)
        self.err.write(f"Warning: removed {holder.describe()}. If that process is still "
                       "running, two applies may now interleave.\n")
        return EXIT_OK

    def cmd_state(self) -> int:
        ws = self.workspace()
        sub = self.args.state_command
        if sub == "list":
            for address in sorted(ws.store.load(decrypt=False).resources):
                self.out.write(address + "\n")
            return EXIT_OK
        if sub == "show":
            state = ws.store.load(decrypt=False)
            address = str(Address.parse(self.args.address))
            record = state.get(address)
            if record is None:
                raise ConfigError(f"{address} is not in the state",
                                  hint="see pkiform state list")
            raw = ws.store._raw or {}
            names = sorted(raw.get("secrets", {}).get(address, {}))
            self.out.write(render_record(address, record, names))
            return EXIT_OK
        if sub == "rekey":
            from pkiform.rekey import rekey

            message = rekey(ws.store)
            self.out.write(message + "\n")
            return EXIT_OK
        raise AssertionError(sub)

    def run(self) -> int:
        command = self.args.command.replace("-", "_")
        return int(getattr(self, f"cmd_{command}")())


def _resume_gc() -> None:
    """Before a long-running phase: the collector runs again, and what was loaded so far
    (config, state, plan) is moved out of its reach, since it stays alive to the end."""
    gc.enable()
    gc.freeze()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    collecting = gc.isenabled()
    cli = Cli(args, out, err)
    try:
        return cli.run()
    except PkiformError as exc:
        err.write(f"Error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("Interrupted. Completed steps are in the state; run apply again to finish.\n")
        return 130
    except Exception as exc:
        if os.environ.get("PKIFORM_DEBUG"):
            raise
        err.write(f"Error: internal error {type(exc).__name__}: {exc} (set PKIFORM_DEBUG=1 "
                  "for a traceback; please report it)\n")
        return EXIT_ERROR
    finally:
        cli.close()
        if collecting:  # as it was on entry (tests call main in one process many times)
            gc.unfreeze()
            gc.enable()
        if os.environ.get("PKIFORM_TIMING"):
            err.write(f"[{time.monotonic() - started:.3f}s]\n")


def entry() -> NoReturn:
    """The ``pkiform`` command (console script and ``python -m pkiform``): `main`, then exit
    without tearing the interpreter down.

    By the time `main` returns, everything the command owns is closed: the state is saved and
    fsynced, the journal closed, the lock released, SSH connections have said goodbye and the
    keygen pool is shut down (its workers and a forked proof child die with this process,
    ``PR_SET_PDEATHSIG``). What normal interpreter exit still does is free every object one by
    one and join paramiko's threads: 0.05-0.1 s of a 2 s redeploy or a 5,000-node plan, for
    nothing the kernel does not do at once. Only the output buffers must be flushed first.
    """
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`pkiform plan | head`): nothing to keep
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
