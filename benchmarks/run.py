"""pkiform benchmarks: one command, prints a table (not timed tests).

    python benchmarks/run.py [--nodes 10,100,1000,5000] [--repeat K] [--lab HOSTS] [--json]

For each cluster size N (a kubeadm-preset config from benchmarks/generate.py: 3 control
planes, N-3 workers, transport "local") and key algorithm, in one run:

1. ``pkiform plan`` with nothing to do (state up to date; refresh on, as users run it).
2. ``pkiform plan --replace ca.kubernetes`` (the largest cascade).
3. ``pkiform apply --auto-approve`` from an empty state and target, and right beside it the
   raw keygen baseline: the same number and kinds of private keys generated with
   cryptography in a ProcessPoolExecutor of os.cpu_count() workers and nothing else.
4. The state file: size, StateStore.load() and StateStore.save() times; peak RSS of plan
   and apply.
5. With ``--lab HOSTS``: a redeploy of every file and restart on HOSTS real lab hosts (systemd +
   sshd, tests/lab/hosts.py) with pkiform, vs a sequential scp + ssh systemctl restart loop
   and the same loop with the hosts in parallel (xargs -P).

Every pkiform command and every baseline runs in a fresh process, timed wall clock from
spawn to exit (interpreter start-up included on both sides); peak RSS is that process's
VmHWM (ru_maxrss from wait4: the largest single process of the tree). Each figure is the
median of the repetitions. Progress goes to stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from generate import KEYS, generate, render  # noqa: E402

DEFAULT_NODES = "10,100,1000,500:ecdsa-p256,5000"
DEFAULT_KEYS = "rsa-2048"
FALLBACK_KEY = "ecdsa-p256"
DEFAULT_RSA_MAX_NODES = 1000
DEFAULT_REPEAT = 3
DEFAULT_BUDGET = 60.0
REPLACE_TARGET = "ca.kubernetes"
LAB_UNITS_CP = ("etcd.service", "kube-apiserver.service", "kube-controller-manager.service",
                "kube-scheduler.service", "kubelet.service")
LAB_UNITS_WORKER = ("kubelet.service",)
# The lab's stand-ins for the control-plane components and the kubelet: a TLS server on the
# component's own port that answers /healthz (openssl s_server, a C program that starts in
# ~10 ms), so a restart is gated by a real health check as on a real cluster. The preset's
# checks dial 127.0.0.1; the lab hosts share one network, so each fake listens on its host's
# own 127.0.1.N and the benchmark declares the same kind of check against that address.
FAKE_PORTS = {"etcd": 2379, "kube-apiserver": 6443, "kube-controller-manager": 10257,
              "kube-scheduler": 10259, "kubelet": 10248}
FAKE_DIR = "/var/lib/pkiform-bench"  # outside /etc/kubernetes, which every repetition drops
FAKE_UNIT = """\
[Unit]
Description=fake {name} for the pkiform deploy benchmark (serves /healthz over TLS)

[Service]
WorkingDirectory={fake_dir}
ExecStart=/usr/bin/openssl s_server -quiet -WWW -accept {address}:{port} \
  -cert {fake_dir}/fake.crt -key {fake_dir}/fake.key

[Install]
WantedBy=multi-user.target
"""
# The restart gate's health check against a fake, two kinds: "tcp" connects to its port (a
# Kubernetes tcpSocket probe; bash's /dev/tcp, no TLS), "https" fetches /healthz with curl as
# the presets' checks do. On real hosts a check costs the probed host little; here 12 hosts
# share 2 cores, so each TLS handshake (curl and s_server, ~20 ms of CPU a check) is taken from
# the deploy being measured. The default is "tcp"; `--lab-check https` measures the other.
FAKE_HEALTH = {
    "tcp": "bash -c 'exec 3<>/dev/tcp/{{host.address}}/{port}'",
    "https": "curl -fsSk --max-time 5 https://{{host.address}}:{port}/healthz",
}
GOALS = {
    "plan_noop_s": 2.0,
    "plan_noop_growth_500_5000": 11.0,
    "plan_replace_ca_s": 3.0,
    "apply_over_keygen": 1.15,
    "state_load_save_s": 1.0,
    "peak_rss_mib": 1024.0,
    "deploy_speedup_vs_sequential": 3.0,
    "deploy_over_parallel_scp": 1.25,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring one process ----------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


def measure(argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None,
            ok: Sequence[int] = (0,), timeout: float | None = None,
            output: Path | None = None) -> tuple[float, float, str]:
    """Run ``argv``; (wall seconds, peak RSS MiB, output text). Raises if the exit code is
    not in ``ok``. Output goes to a file (``output`` or a temp file), never a pipe, so a
    chatty process never blocks and reading it costs nothing during the measurement."""
    with contextlib.ExitStack() as stack:
        if output is None:
            handle = stack.enter_context(tempfile.TemporaryFile("w+b"))
        else:
            handle = stack.enter_context(open(output, "w+b"))
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=handle, stderr=subprocess.STDOUT)
        try:
            if timeout is None:
                _, status, usage = os.wait4(process.pid, 0)
            else:
                deadline = started + timeout
                while True:
                    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() > deadline:
                        process.kill()
                        os.wait4(process.pid, 0)
                        raise CommandFailed(f"timed out after {timeout}s: {shlex.join(argv)}")
                    time.sleep(0.01)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                process.kill()
                os.wait4(process.pid, 0)
            raise
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting
        handle.seek(0)
        text = handle.read().decode(errors="replace")
    if process.returncode not in ok:
        lines = text.splitlines()
        # stderr is unbuffered: a CLI's error lines land above its buffered stdout
        errors = [line for line in lines[:-25] if line.startswith(("Error:", "✗", "  fix:"))]
        tail = "\n".join([*errors[:20], *lines[-25:]])
        raise CommandFailed(f"{shlex.join(argv)} exited {process.returncode}:\n{tail}")
    return elapsed, usage.ru_maxrss / 1024.0, text


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def pkiform_argv(directory: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pkiform", "--no-color", "-C", str(directory), *args]


def child_env(config_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The state key comes from a key file in the (temporary) XDG_CONFIG_HOME.
    env.pop("PKIFORM_STATE_KEY", None)
    env.pop("PKIFORM_STATE_PASSPHRASE", None)
    env.pop("PKIFORM_TIMING", None)
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["NO_COLOR"] = "1"
    return env


# -- helpers that run in their own process (python benchmarks/run.py --_helper …) ----------


def _keygen_one(algorithm: str) -> bytes:
    # The same keys pkiform generates: RSA e=65537 / ECDSA P-256, unencrypted PKCS#8 PEM.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm.startswith("rsa-"):
        key: Any = rsa.generate_private_key(public_exponent=65537,
                                            key_size=int(algorithm.split("-")[1]))
    elif algorithm == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "ecdsa-p384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def helper_keygen(counts: dict[str, int], workers: int) -> dict[str, Any]:
    """The raw keygen baseline: these keys in a process pool, nothing else."""
    algorithms = [a for a, n in sorted(counts.items()) for _ in range(n)]
    started = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, len(algorithms) // (workers * 8))
        generated = sum(1 for _ in pool.map(_keygen_one, algorithms, chunksize=chunk))
    return {"keys": generated, "workers": workers,
            "inner_s": time.perf_counter() - started}


def helper_count_keys(directory: Path) -> dict[str, Any]:
    """Resources in the config and the private keys an apply from empty generates
    (asked of the providers exactly as the applier asks them)."""
    from pkiform.provider import Action
    from pkiform.workspace import Workspace

    ws = Workspace(directory)
    plan = ws.plan(refresh=False)
    counts: Counter[str] = Counter()
    for change in plan.changes:
        if change.spec is not None and change.action is not Action.DELETE:
            counts.update(ws.registry[change.kind].keys_needed(
                change.spec, change.action, change.step))
    return {"resources": len(ws.config.resources), "changes": len(plan.changes),
            "keys": dict(counts)}


def helper_state(directory: Path, repeat: int, budget: float | None) -> dict[str, Any]:
    """StateStore.load() / save() on a copy of DIR/state, in this process, median of
    ``repeat`` (fewer past ``budget`` seconds per operation). load = load(decrypt=True) as
    apply does; load_plan = decrypt=False as plan does."""
    from pkiform.state.store import STATE_FILE, StateStore

    source = directory / "state"
    with tempfile.TemporaryDirectory(prefix="pkiform-bench-state-") as tmp:
        copy = Path(tmp) / "state"
        shutil.copytree(source, copy)
        size = (copy / STATE_FILE).stat().st_size
        loads, plain_loads, saves = [], [], []
        state = None
        for _ in reps(repeat, budget, lambda: sum(loads) + sum(plain_loads), quiet=True):
            store = StateStore(copy)
            started = time.perf_counter()
            store.load(decrypt=False)
            plain_loads.append(time.perf_counter() - started)
            store = StateStore(copy)
            started = time.perf_counter()
            state = store.load(decrypt=True)
            loads.append(time.perf_counter() - started)
        assert state is not None
        for _ in reps(repeat, budget, lambda: sum(saves), quiet=True):
            started = time.perf_counter()
            store.save(state)
            saves.append(time.perf_counter() - started)
        if (copy / STATE_FILE).stat().st_size <= 0:
            raise RuntimeError("save wrote an empty state")
    return {"state_bytes": size, "state_repeat": len(loads), "state_load_s": median(loads),
            "state_load_plan_s": median(plain_loads), "state_save_s": median(saves),
            "state_resources": len(state.resources)}


def run_helper(name: str, args: Sequence[str], env: dict[str, str]) -> tuple[dict[str, Any],
                                                                                float, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), f"--_{name}", *args]
    elapsed, rss, text = measure(argv, env=env)
    line = text.strip().splitlines()[-1]
    return json.loads(line), elapsed, rss


# -- one row ---------------------------------------------------------------------------------


# Where repetitions leave what they wrote: deleted only when the whole run is over.
SPENT = "spent"


def clean(directory: Path) -> None:
    """Make ``directory`` an empty cluster again by moving its state and local target aside
    (into the work directory's ``spent/``), not deleting them. A deletion just before the next
    apply would be measured with it: ext4's inode allocator skips inodes freed within the last
    60 s (300 s while their table block is dirty; ``recently_deleted()``), so right after
    ``rm -rf`` of the previous repetition's 6,000 files and directories every create and mkdir
    scanned the freed ones. perf showed that scan as 30 % of a 1,000-node apply's CPU (system
    time 2.5-5 s instead of 0.6-0.75 s in fresh directories), CPU the keygen workers lost."""
    spent = directory.parent / SPENT
    spent.mkdir(exist_ok=True)
    for name in ("state", "target"):
        if (directory / name).exists():
            (directory / name).rename(spent / f"{directory.name}-{name}-{time.time_ns()}")


def remove_spent(workdir: Path) -> None:
    shutil.rmtree(workdir / SPENT, ignore_errors=True)


def reps(repeat: int, budget: float | None, spent: Callable[[], float],
         quiet: bool = False) -> Iterator[int]:
    """Repetition numbers 1..``repeat``; after the first, another one only if it is expected
    to end within ``budget`` seconds spent on this measurement (None: no budget)."""
    for rep in range(1, repeat + 1):
        if rep > 1 and budget is not None:
            so_far = spent()
            if so_far + so_far / (rep - 1) > budget:
                if not quiet:
                    log(f"  (budget {budget:g}s: stopping after {rep - 1} repetition(s))")
                return
        yield rep


def bench_row(nodes: int, key: str, repeat: int, workdir: Path, env: dict[str, str],
              workers: int, budget: float | None = None) -> dict[str, Any]:
    tag = f"n={nodes} {key}"
    directory = workdir / f"n{nodes}-{key}"
    shutil.rmtree(directory, ignore_errors=True)
    generate(directory, nodes, key=key)
    counted, _, _ = run_helper("count-keys", [str(directory)], env)
    keys = {k: int(v) for k, v in counted["keys"].items()}
    log(f"{tag}: {counted['resources']} resources, {sum(keys.values())} keys {keys}; "
        f"{repeat} repetition(s)")

    apply_s, apply_rss, keygen_s, keygen_inner = [], [], [], []
    for rep in reps(repeat, budget, lambda: sum(apply_s) + sum(keygen_s)):
        clean(directory)
        elapsed, rss, text = measure(pkiform_argv(directory, "apply", "--auto-approve"),
                                     env=env)
        if "Apply complete!" not in text:
            raise CommandFailed(f"{tag}: apply did not complete:\n{text[-2000:]}")
        apply_s.append(elapsed)
        apply_rss.append(rss)
        result, base_s, _ = run_helper("keygen", [json.dumps(keys), str(workers)], env)
        if result["keys"] != sum(keys.values()):
            raise CommandFailed(f"{tag}: baseline generated {result['keys']} keys")
        keygen_s.append(base_s)
        keygen_inner.append(result["inner_s"])
        log(f"{tag}: apply {rep}/{repeat}: {elapsed:.2f}s ({rss:.0f} MiB); raw keygen "
            f"{base_s:.2f}s (pool {result['inner_s']:.2f}s)")

    noop_s, noop_rss = [], []
    for rep in reps(repeat, budget, lambda: sum(noop_s)):
        elapsed, rss, text = measure(
            pkiform_argv(directory, "plan", "--detailed-exitcode"), env=env, ok=(0,))
        if "No changes." not in text:
            raise CommandFailed(f"{tag}: plan after apply is not empty:\n{text[-2000:]}")
        noop_s.append(elapsed)
        noop_rss.append(rss)
        log(f"{tag}: plan (no changes) {rep}/{repeat}: {elapsed:.2f}s ({rss:.0f} MiB)")

    replace_s, replace_rss = [], []
    for rep in reps(repeat, budget, lambda: sum(replace_s)):
        elapsed, rss, text = measure(
            pkiform_argv(directory, "plan", "--replace", REPLACE_TARGET, "--detailed-exitcode"),
            env=env, ok=(2,))
        replace_s.append(elapsed)
        replace_rss.append(rss)
        summary = next((line for line in text.splitlines() if line.startswith("Plan:")), "")
        log(f"{tag}: plan --replace {REPLACE_TARGET} {rep}/{repeat}: {elapsed:.2f}s "
            f"({rss:.0f} MiB) {summary}")

    state, _, _ = run_helper("state", [str(directory), str(max(3, repeat)), str(budget or 0)],
                             env)
    log(f"{tag}: state {state['state_bytes'] / 2**20:.1f} MiB, load {state['state_load_s']:.3f}s"
        f" (plan-style {state['state_load_plan_s']:.3f}s), save {state['state_save_s']:.3f}s")
    clean(directory)

    apply_med, keygen_med = median(apply_s), median(keygen_s)
    plan_rss = max(noop_rss + replace_rss)
    return {
        "nodes": nodes,
        "key": key,
        "resources": int(counted["resources"]),
        "keys": int(sum(keys.values())),
        "repeat": {"apply": len(apply_s), "plan_noop": len(noop_s),
                   "plan_replace_ca": len(replace_s), "state": state["state_repeat"]},
        "plan_noop_s": median(noop_s),
        "plan_replace_ca_s": median(replace_s),
        "apply_s": apply_med,
        "keygen_baseline_s": keygen_med,
        "keygen_pool_s": median(keygen_inner),
        "apply_over_keygen": apply_med / keygen_med,
        "state_bytes": int(state["state_bytes"]),
        "state_load_s": state["state_load_s"],
        "state_load_plan_s": state["state_load_plan_s"],
        "state_save_s": state["state_save_s"],
        "peak_rss_mib": max(plan_rss, max(apply_rss)),
        "peak_rss_plan_mib": plan_rss,
        "peak_rss_apply_mib": max(apply_rss),
        "samples": {"plan_noop_s": noop_s, "plan_replace_ca_s": replace_s,
                    "apply_s": apply_s, "keygen_baseline_s": keygen_s},
    }


# -- deploy fan-out on lab hosts ---------------------------------------------------------------

# An extra, unmeasured redeploy through the CLI with every step's start and end recorded (the
# proof's simulated apply has no hooks and is left out): where a deploy's time goes.
_TRACER = r"""
import json, sys, time
origin = time.monotonic()
import pkiform.apply as apply_module
from pkiform import cli
events = []
emit = apply_module.Applier.emit
def traced(self, event):
    change = event.change
    if self.hooks and change is not None and event.kind in ("start", "done", "failed"):
        events.append([time.monotonic() - origin, event.kind, str(change.address),
                       change.host or "", change.rolling or ""])
    emit(self, event)
apply_module.Applier.emit = traced
status = cli.main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "events": events, "main_s": time.monotonic() - origin}, out)
sys.exit(status)
"""


def deploy_timeline(argv: Sequence[str], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run ``pkiform`` (``argv`` after ``-m pkiform``) under the tracer; a summary of when
    the files of each host were written and each restart ran, in seconds from spawn."""
    trace = workdir / "deploy-trace.json"
    elapsed, _, _ = measure([sys.executable, "-c", _TRACER, str(trace), *argv], env=env)
    data = json.loads(trace.read_text())
    starts: dict[str, float] = {}
    files: dict[str, list[float]] = {}
    restarts: list[dict[str, Any]] = []
    for at, kind, address, host, rolling in data["events"]:
        if kind == "start":
            starts[address] = at
            continue
        began = starts.get(address, at)
        if address.startswith("service."):
            restarts.append({"address": address, "host": host, "rolling": rolling,
                             "start": round(began, 3), "end": round(at, 3)})
        elif host:
            first, last, count = files.get(host, [began, at, 0])
            files[host] = [min(first, began), max(last, at), count + 1]
    steps = [e[0] for e in data["events"]]
    return {"process_s": round(elapsed, 3), "cli_main_s": round(data["main_s"], 3),
            "first_step": round(min(steps), 3) if steps else None,
            "last_step": round(max(steps), 3) if steps else None,
            "files": {h: {"first": round(f, 3), "last": round(last, 3), "count": n}
                      for h, (f, last, n) in sorted(files.items())},
            "restarts": sorted(restarts, key=lambda r: (r["start"], r["address"]))}


def log_timeline(timeline: dict[str, Any]) -> None:
    log(f"deploy timeline (one more redeploy, not measured; s from spawn): steps "
        f"{timeline['first_step']}–{timeline['last_step']}, cli.main returned at "
        f"{timeline['cli_main_s']}, exit at {timeline['process_s']}")
    for host, f in timeline["files"].items():
        log(f"  files {host}: {f['count']} written {f['first']:.2f}–{f['last']:.2f}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for restart in timeline["restarts"]:
        groups.setdefault(restart["rolling"] or "(not rolling)", []).append(restart)
    for group, members in sorted(groups.items()):
        log(f"  restarts {group}: " + ", ".join(
            f"{r['address'].removeprefix('service.')} {r['start']:.2f}–{r['end']:.2f}"
            for r in members))


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and
    iowait). The deploy's work runs in the lab hosts' processes, not only in the measured one."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def machine_processes() -> int:
    """Processes (and threads) the whole machine has created since boot (/proc/stat): on a
    CPU-bound lab, what a deploy method makes its hosts fork and exec is most of its cost."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


def measure_busy(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """``measure``, but (wall seconds, machine CPU seconds meanwhile, processes the machine
    created meanwhile, output text)."""
    before, forked = machine_busy_seconds(), machine_processes()
    elapsed, _, text = measure(argv, env=env)
    return elapsed, machine_busy_seconds() - before, machine_processes() - forked, text


def bench_deploy(hosts: int, repeat: int, workdir: Path, env: dict[str, str],
                 check: str = "tcp") -> dict[str, Any]:
    """pkiform redeploy vs scp loops on ``hosts`` lab hosts (tests/lab/hosts.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.lab.hosts import Lab, LabError, lab_supported

    reason = lab_supported()
    if reason is not None:
        raise CommandFailed(f"--lab: lab hosts cannot run here: {reason}")
    if hosts < 3:
        raise CommandFailed("--lab needs at least 3 hosts (3 control planes)")
    log(f"deploy: booting {hosts} lab hosts…")
    for attempt in (1, 2, 3):
        lab = Lab(hosts, workdir)
        try:
            lab.start()
            break
        except LabError as exc:  # lab boot can flake on a loaded machine; try again
            first = str(exc).splitlines()[:3]
            if attempt == 3:
                raise
            log(f"deploy: lab boot failed ({' '.join(first)}); retrying")
            time.sleep(10)
    try:
        log(f"deploy: {hosts} hosts up in {lab.boot_seconds:.1f}s")
        names = [h.name for h in lab.hosts]
        control = set(names[:3])
        units = {name: LAB_UNITS_CP if name in control else LAB_UNITS_WORKER for name in names}

        def install(host: Any) -> None:
            host.run(f"set -e; umask 077; mkdir -p {FAKE_DIR}; cd {FAKE_DIR}; echo ok > healthz; "
                     "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                     "-keyout fake.key -out fake.crt -days 2 -subj /CN=pkiform-bench-fake "
                     "2>/dev/null")
            for unit in units[host.name]:
                name = unit.removesuffix(".service")
                host.install_unit(unit, FAKE_UNIT.format(
                    name=name, address=host.address, port=FAKE_PORTS[name],
                    fake_dir=FAKE_DIR), enable=True, start=True)

        with cf.ThreadPoolExecutor(len(lab.hosts)) as pool:
            list(pool.map(install, lab.hosts))

        directory = workdir / f"deploy-{hosts}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        # ECDSA: a redeploy generates no keys anyway; the first apply is not measured.
        (directory / "pkiform.toml").write_text(render(
            hosts, key="ecdsa-p256", ssh={h.name: h.address for h in lab.hosts},
            identity_file=str(lab.key_path), known_hosts=str(lab.known_hosts_path),
            health_checks=False, parallelism=max(10, hosts),
            services={name: {"health_command": FAKE_HEALTH[check].format(port=port)}
                      for name, port in FAKE_PORTS.items()}))
        elapsed, _, _ = measure(pkiform_argv(directory, "apply", "--auto-approve"), env=env)
        log(f"deploy: first apply (not measured) {elapsed:.1f}s")

        # The very files pkiform deployed, copied off each host: the scp baselines push these.
        render_dir = directory / "render"
        for host in lab.hosts:
            shutil.copytree(host.file_path("/etc/kubernetes"),
                            render_dir / host.name / "kubernetes", symlinks=True,
                            ignore=shutil.ignore_patterns("*.pkiform-backup", ".pkiform.*"))
        files = sum(1 for _ in render_dir.rglob("*") if _.is_file())
        log(f"deploy: {files} files on {hosts} hosts")

        ssh_config = str(lab.ssh_config_path)
        per_host = render_dir / "hosts.txt"
        per_host.write_text("".join(f"{name} {' '.join(units[name])}\n" for name in names))
        one_host = (
            'set -e; h=$1; shift; '
            f'scp -q -r -p -F {shlex.quote(ssh_config)} '
            f'{shlex.quote(str(render_dir))}/"$h"/kubernetes "$h":/etc/ ; '
            f'ssh -F {shlex.quote(ssh_config)} "$h" systemctl restart "$@"'
        )
        sequential = ["bash", "-c",
                      f'while read -r h units; do bash -c {shlex.quote(one_host)} _ "$h" '
                      f'$units </dev/null; done < {shlex.quote(str(per_host))}']
        parallel = ["bash", "-c",
                    f"xargs -P {hosts} -L 1 bash -c {shlex.quote(one_host)} _ "
                    f"< {shlex.quote(str(per_host))}"]

        def drop_files() -> None:
            # Make every file drift (gone), so the plan rewrites all of them and restarts
            # every unit that uses them: a full redeploy without generating keys.
            def drop(host: Any) -> None:
                host.run("rm -rf /etc/kubernetes")
            with cf.ThreadPoolExecutor(len(lab.hosts)) as pool:
                list(pool.map(drop, lab.hosts))

        # The redeploy: every file is gone (drift) so every file is written again, and every
        # unit is restarted (--replace of a service restarts it; etcd and kube-apiserver roll
        # one host at a time as configured, max_unavailable = 1).
        services = sorted({u.removesuffix(".service") for us in units.values() for u in us})
        redeploy = pkiform_argv(directory, "apply", "--auto-approve",
                                *(arg for s in services for arg in ("--replace", f"service.{s}")))
        expected_restarts = sum(len(us) for us in units.values())
        pk_s, seq_s, par_s, load = [], [], [], []
        cpu: dict[str, list[float]] = {"pkiform": [], "sequential": [], "parallel_scp": []}
        forks: dict[str, list[int]] = {name: [] for name in cpu}
        for rep in range(1, repeat + 1):
            load.append(round(os.getloadavg()[0], 2))  # a shared machine: say how busy
            drop_files()
            elapsed, busy, forked, text = measure_busy(redeploy, env)
            cpu["pkiform"].append(round(busy, 2))
            forks["pkiform"].append(forked)
            restarts = sum(1 for line in text.splitlines()
                           if line.startswith("✓") and " service." in line)
            if restarts < expected_restarts:
                raise CommandFailed(f"deploy: pkiform restarted {restarts} units, expected "
                                    f"{expected_restarts}:\n{text[-3000:]}")
            done = next((line for line in text.splitlines() if line.startswith("Apply")), "")
            pk_s.append(elapsed)
            drop_files()
            seq, busy, forked, _ = measure_busy(sequential, env)
            seq_s.append(seq)
            cpu["sequential"].append(round(busy, 2))
            forks["sequential"].append(forked)
            drop_files()
            par, busy, forked, _ = measure_busy(parallel, env)
            par_s.append(par)
            cpu["parallel_scp"].append(round(busy, 2))
            forks["parallel_scp"].append(forked)
            log(f"deploy {rep}/{repeat}: pkiform {elapsed:.2f}s ({done}); sequential scp "
                f"{seq:.2f}s; parallel scp {par:.2f}s (load average {load[-1]:.2f}; machine "
                f"CPU s: {cpu['pkiform'][-1]}, {cpu['sequential'][-1]}, "
                f"{cpu['parallel_scp'][-1]}; processes: {forks['pkiform'][-1]}, "
                f"{forks['sequential'][-1]}, {forks['parallel_scp'][-1]})")
        drop_files()
        timeline: dict[str, Any] | None = None
        try:
            timeline = deploy_timeline(redeploy[3:], env, workdir)  # after `-m pkiform`
            log_timeline(timeline)
        except (CommandFailed, OSError, ValueError, KeyError) as exc:  # figures stand alone
            log(f"deploy: no timeline ({type(exc).__name__}: {str(exc)[:300]})")
        # Still consistent: pkiform's last redeploy was overwritten by identical files.
        measure(pkiform_argv(directory, "plan", "--detailed-exitcode"), env=env, ok=(0,))
    finally:
        lab.close()
    pk, seq, par = median(pk_s), median(seq_s), median(par_s)
    return {"hosts": hosts, "files": files, "restarts": expected_restarts, "health_check": check,
            "pkiform_s": pk, "sequential_s": seq,
            "parallel_scp_s": par, "speedup_vs_sequential": seq / pk,
            "over_parallel_scp": pk / par,
            "machine_cpu_s": {name: median(values) for name, values in cpu.items()},
            "machine_processes": {name: median(values) for name, values in forks.items()},
            "samples": {"pkiform_s": pk_s, "sequential_s": seq_s, "parallel_scp_s": par_s,
                        "loadavg_1m": load,
                        **{f"machine_cpu_{name}_s": values for name, values in cpu.items()},
                        **{f"machine_processes_{name}": values
                           for name, values in forks.items()}},
            "timeline": timeline}


# -- machine facts, goals, table ---------------------------------------------------------------


def machine() -> dict[str, Any]:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += "+dirty"
    try:
        from importlib.metadata import version

        pkiform_version = version("pkiform")
    except Exception:
        pkiform_version = "?"
    return {
        "cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "cpu_model": cpu,
        "memory_gib": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "pkiform": pkiform_version,
        "commit": commit,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def goals(rows: Sequence[dict[str, Any]], deploy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each goal of the benchmark issue, met or missed, with the figures it was judged on."""
    result: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, limit: float, where: str) -> None:
        result.append({"goal": goal, "where": where, "value": value, "limit": limit,
                       "met": None if value is None or math.isnan(value) else value <= limit})

    by = {(r["nodes"], r["key"]): r for r in rows}
    for row in rows:
        where = f"{row['nodes']} nodes, {row['key']}"
        if row["nodes"] == 5000:
            add("(1) plan, nothing to do, at 5,000 nodes [s]", row["plan_noop_s"],
                GOALS["plan_noop_s"], where)
            small = by.get((500, row["key"]))
            if small:
                add("(1) plan growth 500 → 5,000 nodes [×]",
                    row["plan_noop_s"] / small["plan_noop_s"],
                    GOALS["plan_noop_growth_500_5000"], row["key"])
            add("(2) plan --replace ca.kubernetes at 5,000 nodes [s]",
                row["plan_replace_ca_s"], GOALS["plan_replace_ca_s"], where)
            add("(4) state load + save at 5,000 nodes [s]",
                row["state_load_s"] + row["state_save_s"], GOALS["state_load_save_s"], where)
        if row["key"].startswith("rsa"):
            add("(3) apply / raw keygen [×]", row["apply_over_keygen"],
                GOALS["apply_over_keygen"], where)
        else:
            # Shown, not judged: the goal is about keygen-bound applies ("everything else
            # must be negligible beside keygen"); an ECDSA P-256 key takes ~30 µs, so this
            # ratio measures writing the cluster's files, not overhead beside keygen.
            result.append({"goal": "(3) apply / raw keygen [×] (ECDSA: shown only)",
                           "where": where, "value": row["apply_over_keygen"],
                           "limit": GOALS["apply_over_keygen"], "met": None})
        add("(4) peak RSS of plan and apply [MiB]", row["peak_rss_mib"],
            GOALS["peak_rss_mib"], where)
    if deploy:
        where = f"{deploy['hosts']} lab hosts"
        # "≥ 3× faster": judged as sequential/pkiform ≥ 3, i.e. pkiform/sequential ≤ 1/3.
        result.append({"goal": "(5) speed-up vs sequential scp loop [×, ≥]", "where": where,
                       "value": deploy["speedup_vs_sequential"],
                       "limit": GOALS["deploy_speedup_vs_sequential"],
                       "met": deploy["speedup_vs_sequential"]
                       >= GOALS["deploy_speedup_vs_sequential"]})
        add("(5) pkiform / parallel scp (xargs -P) [×]", deploy["over_parallel_scp"],
            GOALS["deploy_over_parallel_scp"], where)
    return result


def _fmt_s(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"pkiform benchmarks — {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, cryptography {m['cryptography']}, {m['openssl']}, "
        f"pkiform {m['pkiform']} {m['commit']}"
        + (f" (frozen snapshot {m['frozen_sources']})" if m.get("frozen_sources") else "")
        + f", load average {m['loadavg_1m']} at the start, {m['loadavg_1m_end']} at the end",
        "times: median wall seconds of fresh processes (plan with refresh on, local target); "
        "keygen = raw cryptography keygen in a pool of "
        f"{report['workers']} processes",
        "",
    ]
    head = ("nodes", "key", "resources", "keys", "plan noop s", "plan replace CA s",
            "apply s", "keygen s", "apply/keygen", "state MiB", "load s", "save s",
            "RSS plan MiB", "RSS apply MiB")
    body = []
    for r in report["rows"]:
        body.append((
            f"{r['nodes']:,}", r["key"], f"{r['resources']:,}", f"{r['keys']:,}",
            _fmt_s(r["plan_noop_s"]), _fmt_s(r["plan_replace_ca_s"]), _fmt_s(r["apply_s"]),
            _fmt_s(r["keygen_baseline_s"]), f"{r['apply_over_keygen']:.2f}×",
            f"{r['state_bytes'] / 2**20:.2f}", _fmt_s(r["state_load_s"]),
            _fmt_s(r["state_save_s"]), f"{r['peak_rss_plan_mib']:.0f}",
            f"{r['peak_rss_apply_mib']:.0f}",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = " | ".join(f"{{:>{w}}}" for w in widths)
    lines.append(fmt.format(*head))
    lines.append("-+-".join("-" * w for w in widths))
    lines += [fmt.format(*row) for row in body]
    deploy = report.get("deploy")
    lines.append("")
    if deploy:
        lines.append(
            f"deploy fan-out, {deploy['hosts']} lab hosts, {deploy['files']} files, "
            f"{deploy['restarts']} unit restarts (redeploy of everything, each gated by a "
            f"{deploy.get('health_check', 'tcp')} health check): "
            f"pkiform {deploy['pkiform_s']:.2f}s; sequential scp+ssh "
            f"{deploy['sequential_s']:.2f}s ({deploy['speedup_vs_sequential']:.2f}× faster); "
            f"parallel scp (xargs -P) {deploy['parallel_scp_s']:.2f}s "
            f"(pkiform {deploy['over_parallel_scp']:.2f}× of it)")
    elif report.get("deploy_error"):
        lines.append(f"deploy fan-out: FAILED: {report['deploy_error'].splitlines()[0]}")
    else:
        lines.append("deploy fan-out: not measured (run with --lab 12)")
    lines += ["", "goals:"]
    for goal in report["goals"]:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[goal["met"]]
        value = "-" if goal["value"] is None else f"{goal['value']:.4g}"
        lines.append(f"  {mark} {goal['goal']}: {value} (limit {goal['limit']:g}; "
                     f"{goal['where']})")
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------


def parse_rows(nodes: str, keys: str, rsa_max: int) -> list[tuple[int, str]]:
    """``--nodes 10,100,500:ecdsa-p256`` × ``--key``. A size above ``rsa_max`` gets
    ecdsa-p256 instead of an RSA key unless it names its key (``5000:rsa-2048``): RSA-2048
    keygen for 5,000 nodes takes minutes per repetition on 2 cores."""
    key_list = [k.strip() for k in keys.split(",") if k.strip()]
    for key in key_list:
        if key not in KEYS:
            raise argparse.ArgumentTypeError(f"unknown key {key!r} (one of {', '.join(KEYS)})")
    rows: list[tuple[int, str]] = []
    for item in (x.strip() for x in nodes.split(",") if x.strip()):
        count, _, explicit = item.partition(":")
        try:
            n = int(count.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--nodes: {item!r} is not a number") from None
        if n < 3:
            raise argparse.ArgumentTypeError("--nodes: at least 3 (3 control planes)")
        if explicit:
            if explicit not in KEYS:
                raise argparse.ArgumentTypeError(f"--nodes: unknown key {explicit!r}")
            chosen = [explicit]
        else:
            chosen = [FALLBACK_KEY if k.startswith("rsa") and n > rsa_max else k
                      for k in key_list]
        rows += [(n, k) for k in dict.fromkeys(chosen) if (n, k) not in rows]
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="pkiform benchmarks: prints a table (see benchmarks/README.md)")
    parser.add_argument("--nodes", default=DEFAULT_NODES,
                        help="cluster sizes, comma separated; N:KEY picks the key for one "
                        f"size (default {DEFAULT_NODES})")
    parser.add_argument("--key", default=DEFAULT_KEYS,
                        help=f"key algorithms for every size, comma separated (default "
                        f"{DEFAULT_KEYS})")
    parser.add_argument("--rsa-max-nodes", type=int, default=DEFAULT_RSA_MAX_NODES,
                        help="sizes above this use ecdsa-p256 unless named as N:rsa-2048 "
                        f"(RSA keygen at 5,000 nodes takes minutes; default "
                        f"{DEFAULT_RSA_MAX_NODES})")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions per measurement, median reported (default "
                        f"{DEFAULT_REPEAT}, fewer where --budget runs out)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per measurement and row: after the first repetition, "
                        "another only if it should end within this (0: always --repeat; "
                        f"default {DEFAULT_BUDGET:g}; none when --repeat is given)")
    parser.add_argument("--lab", type=int, metavar="HOSTS", default=None,
                        help="also measure the deploy fan-out on HOSTS lab hosts (root)")
    parser.add_argument("--lab-repeat", type=int, default=None,
                        help="repetitions of the deploy measurement (default: --repeat or 3)")
    parser.add_argument("--lab-check", choices=sorted(FAKE_HEALTH), default="tcp",
                        help="the deploy's health checks against the fake units: a TCP "
                        "connect (default) or curl of /healthz over TLS")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes of the keygen baseline (default: cores, as pkiform)")
    parser.add_argument("--workdir", help="where to put the generated clusters "
                        "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--freeze", action="store_true",
                        help="measure a snapshot of the working tree, installed in the work "
                        "directory (others may be editing the engine while it runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    # internal: the helpers each measurement runs in its own process
    parser.add_argument("--_keygen", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_count-keys", dest="_count_keys", help=argparse.SUPPRESS)
    parser.add_argument("--_state", nargs=3, help=argparse.SUPPRESS)
    return parser


def package_dirs() -> dict[str, str]:
    """pyproject.toml's ``[tool.setuptools] package-dir``: import name -> tree directory."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(project["tool"]["setuptools"]["package-dir"])


def byte_compile(directory: Path) -> None:
    """Write the ``.pyc`` of every module under ``directory``, as ``pip install`` does. Without
    them, and with PYTHONDONTWRITEBYTECODE set (as on these machines), every measured process
    would compile pkiform from source at start-up (~30 ms, more under load): a cost no
    installed pkiform has, and one the baselines, which import little, would not share."""
    import compileall

    if not compileall.compile_dir(str(directory), quiet=1, workers=1):
        raise CommandFailed(f"byte-compiling {directory} failed")


def freeze(workdir: Path, env: dict[str, str]) -> str:
    """Copy the engine's packages as they are now into WORKDIR/frozen-site (the layout of an
    installed pkiform: ``[tool.setuptools] package-dir`` of pyproject.toml) and point every
    measured process at it (PYTHONPATH), so edits made to the tree while the benchmark runs
    cannot mix two versions of the engine into one table. Returns a digest of the sources."""

    site = workdir / "frozen-site"
    shutil.rmtree(site, ignore_errors=True)
    mapping = package_dirs()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, directory in sorted(mapping.items()):  # parents before children
        target = site.joinpath(*package.split("."))
        shutil.copytree(ROOT / directory, target, ignore=junk, dirs_exist_ok=True)
    byte_compile(site)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import pkiform.cli, pkiform.state.store as s, "
         "pkiform.providers as p; print(pkiform.cli.__file__, s.__file__, p.__file__)"],
        env=env, capture_output=True, text=True, check=True, cwd=workdir).stdout.split()
    if not all(path.startswith(str(site)) for path in probe):
        raise CommandFailed(f"--freeze: pkiform does not import from {site}: {probe}")
    digest = hashlib.sha256()
    for path in sorted(site.rglob("*.py")):
        digest.update(path.relative_to(site).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="pkiform-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args._keygen:
        print(json.dumps(helper_keygen(json.loads(args._keygen[0]), int(args._keygen[1]))))
        return 0
    if args._count_keys:
        print(json.dumps(helper_count_keys(Path(args._count_keys))))
        return 0
    if args._state:
        print(json.dumps(helper_state(Path(args._state[0]), int(args._state[1]),
                                      float(args._state[2]) or None)))
        return 0
    try:
        rows_wanted = parse_rows(args.nodes, args.key, args.rsa_max_nodes)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")

    repeat = args.repeat or DEFAULT_REPEAT
    if args.budget is None:
        budget = DEFAULT_BUDGET if args.repeat is None else None
    else:
        budget = args.budget or None
    started = time.monotonic()
    facts = machine()  # the commit measured: before anyone commits during the run
    rows: list[dict[str, Any]] = []
    deploy = None
    deploy_error = None
    # Every measured process starts in the work directory: `python -m` puts its start
    # directory first on sys.path, and the repository's own pkiform/ must not shadow --freeze.
    with _workdir(args.workdir) as workdir, contextlib.chdir(workdir):
        config_home = workdir / "config-home"
        config_home.mkdir(exist_ok=True)
        env = child_env(config_home)
        frozen = None
        if args.freeze:
            frozen = freeze(workdir, env)
            log(f"measuring a frozen snapshot of the tree (pkiform sources {frozen})")
        else:  # the tree itself, byte-compiled in place (__pycache__ is git-ignored)
            for directory in sorted(set(package_dirs().values())):
                byte_compile(ROOT / directory)
        log(f"rows: {', '.join(f'{n}/{k}' for n, k in rows_wanted)}; workdir {workdir}")
        for nodes, key in rows_wanted:
            rows.append(bench_row(nodes, key, repeat, workdir, env, args.workers, budget))
        if args.lab:
            try:
                deploy = bench_deploy(args.lab, args.lab_repeat or repeat, workdir, env,
                                      args.lab_check)
            except Exception as exc:  # keep the rows measured so far
                deploy_error = f"{type(exc).__name__}: {str(exc)[:2000]}"
                log(f"deploy: FAILED, not measured: {deploy_error}")
        remove_spent(workdir)
    report = {
        "machine": {**facts, "frozen_sources": frozen,
                    "loadavg_1m_end": round(os.getloadavg()[0], 2)},
        "workers": args.workers,
        "rows": rows,
        "deploy": deploy,
        "deploy_error": deploy_error,
        "goals": goals(rows, deploy),
        "total_s": time.monotonic() - started,
    }
    log(f"done in {report['total_s']:.0f}s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
