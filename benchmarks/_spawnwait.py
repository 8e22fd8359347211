"""Sections 1 and 2: spawn+wait of /bin/true, from a small parent and from a 2 GiB parent.

*Servers* (fresh interpreters running this file with ``--serve``) measure the methods: a
small parent, and a parent that first allocates and touches 2 GiB; each has a twin with the
same memory that runs only the fork()ing baseline, whose after-effects (copy-on-write faults
on the parent's next writes) would otherwise be charged to whichever method ran next. The
driver (:func:`run`, in run.py's process) hands out chunks of rounds to the servers in turn,
so drift on the machine hits both parents alike; within a round every method runs once, in
shuffled order. One sample = one call, timed end to end: spawn, wait until the child has
exited and been reaped, release every handle.

Protocol: one JSON object per line on the server's original stdin/stdout (moved off fds 0/1,
which the server points at /dev/null so no child inherits them).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from _common import JSONDict, log, round_robin, worker_env

TRUE = "/bin/true"
ARGV = [TRUE]

LABELS = {
    "spawn_lifelined": "tether.spawn_lifelined + Pidfd.wait()",
    "posix_spawn": "os.posix_spawn + os.waitpid",
    "popen": "subprocess.Popen().wait()",
    "spawn_group": "tether.spawn(contain='group').wait()",
    "spawn_cgroup": "tether.spawn(contain='cgroup').wait()",
    "spawn_pidns": "tether.spawn(contain='pidns').wait()",
    "spawn_pidns_limits": "tether.spawn(contain='pidns', limits=memory,cpus,pids).wait()",
    "popen_preexec": "Popen(preexec_fn=PDEATHSIG).wait()",
    "dropin_popen": "tether.subprocess.Popen().wait()",
    "stdlib_run": "subprocess.run()",
    "dropin_run": "tether.subprocess.run()",
    "tether_run": "tether.run()",
}
ORDER = list(LABELS)

PR_SET_PDEATHSIG = 1


# -- the methods (server side) --------------------------------------------------------------------


def _methods() -> dict[str, Callable[[], object]]:
    import tether
    import tether.subprocess as dropin

    libc = ctypes.CDLL(None, use_errno=True)

    def pdeathsig() -> None:
        # The usual workaround: runs Python in the child, so subprocess must fork().
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def spawn_lifelined() -> None:
        s = tether.spawn_lifelined(ARGV)
        s.pidfd.wait()
        s.pidfd.close()
        s.lifeline.close()

    def posix_spawn() -> None:
        pid = os.posix_spawn(TRUE, ARGV, os.environ)  # noqa: TET103  baseline
        os.waitpid(pid, 0)  # noqa: TET301  baseline

    def popen() -> None:
        subprocess.Popen(ARGV).wait()  # noqa: TET102  baseline

    def popen_preexec() -> None:
        subprocess.Popen(ARGV, preexec_fn=pdeathsig).wait()  # noqa: TET102  baseline

    def dropin_popen() -> None:
        dropin.Popen(ARGV).wait()

    def stdlib_run() -> None:
        subprocess.run(ARGV)  # noqa: TET102  baseline

    def spawn_mode(mode: str, limits: tether.Limits | None = None) -> Callable[[], object]:
        def fn() -> None:
            tether.spawn(ARGV, contain=mode, limits=limits).wait()

        return fn

    # spawn_pidns_limits: memory, CPU and process count, so that every controller a limited
    # tree uses gets its per-tree cgroup (on a hybrid host: four v1 directories).
    limits = tether.Limits(memory=512 << 20, cpus=1.0, pids=100)

    return {
        "spawn_lifelined": spawn_lifelined,
        "posix_spawn": posix_spawn,
        "popen": popen,
        "spawn_group": spawn_mode("group"),
        "spawn_cgroup": spawn_mode("cgroup"),
        "spawn_pidns": spawn_mode("pidns"),
        "spawn_pidns_limits": spawn_mode("pidns", limits),
        "popen_preexec": popen_preexec,
        "dropin_popen": dropin_popen,
        "stdlib_run": stdlib_run,
        "dropin_run": lambda: dropin.run(ARGV),
        "tether_run": lambda: tether.run(ARGV),
    }


def _touch(mib: int) -> bytearray:
    """Allocate ``mib`` MiB and write one byte per page, so every page is resident."""
    buf = bytearray(mib << 20)
    page = resource.getpagesize()
    buf[::page] = b"\x01" * len(range(0, len(buf), page))
    return buf


def serve(touch_mib: int, only: list[str]) -> None:
    import tether

    # Protocol on private, close-on-exec fds; children get /dev/null as stdin/stdout.
    cmd_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    cmd_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)

    ballast = _touch(touch_mib) if touch_mib else bytearray()
    methods = {k: v for k, v in _methods().items() if k in only}
    unavailable: dict[str, str] = {}
    for name, fn in list(methods.items()):
        try:
            fn()
        except tether.Unsupported as exc:
            unavailable[name] = str(exc)
            del methods[name]
    gc.collect()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _send(cmd_out, {"ready": True, "rss_kib": rss, "touched_mib": touch_mib,
                    "methods": list(methods), "unavailable": unavailable})
    for line in cmd_in:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "warmup":
            round_robin(methods, rounds=int(msg["n"]))
            _send(cmd_out, {"ok": True})
        elif msg["cmd"] == "rounds":
            every = {k: int(v) for k, v in msg.get("every", {}).items()}
            cpu: dict[str, list[float]] = {}
            samples = round_robin(methods, rounds=int(msg["n"]), every=every,
                                  first_round=int(msg["first"]), cpu_out=cpu)
            _send(cmd_out, {"samples": samples, "cpu": cpu})
    del ballast


def _send(stream: IO[str], obj: JSONDict) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


# -- the driver (run.py side) ---------------------------------------------------------------------


class _Server:
    def __init__(self, touch_mib: int, only: list[str]) -> None:
        self.touch_mib = touch_mib
        self.proc = subprocess.Popen(  # noqa: TET102  the harness
            [sys.executable, os.path.abspath(__file__), "--serve", str(touch_mib),
             ",".join(only)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=worker_env(),
        )
        self.hello = self.recv()

    def send(self, obj: JSONDict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> JSONDict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"spawn server (touch {self.touch_mib} MiB) died: "
                               f"status {self.proc.wait()}")
        data: JSONDict = json.loads(line)
        return data

    def ask(self, obj: JSONDict) -> JSONDict:
        self.send(obj)
        return self.recv()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
            except BrokenPipeError:
                pass
        self.proc.wait()


def run(params: JSONDict) -> JSONDict:
    """Run both parents; return samples (seconds per spawn+wait) per parent and method."""
    quick = bool(params.get("quick"))
    rounds = int(params.get("rounds", 10 if quick else 300))
    chunk = int(params.get("chunk", 5 if quick else 10))
    big_mib = int(params.get("big_mib", 2048))
    fork_every = int(params.get("fork_every", 5 if quick else 10))
    t0 = time.monotonic()
    # The fork()ing baseline runs in a server of its own (same memory): after a fork() the
    # parent pays a copy-on-write fault for every page it writes next, and that cost would
    # land on whichever method ran after it.
    forking = ["popen_preexec"]
    others = [m for m in ORDER if m not in forking]
    layout = [("small", 0, others), ("small", 0, forking)]
    if big_mib:
        layout += [("big", big_mib, others), ("big", big_mib, forking)]
    servers: list[tuple[str, _Server]] = []
    try:
        for pname, mib, only in layout:
            log(f"spawn+wait: starting a {pname} parent ({mib} MiB touched) for {only}")
            servers.append((pname, _Server(mib, only)))
        for _, srv in servers:
            srv.ask({"cmd": "warmup", "n": 1 if quick else 10})
        parents = {p: srv for p, srv in servers}  # one server per parent, for the metadata
        samples: dict[str, dict[str, list[float]]] = {p: {} for p in parents}
        cpu: dict[str, dict[str, list[float]]] = {p: {} for p in parents}
        unavailable: dict[str, dict[str, str]] = {p: {} for p in parents}
        for pname, srv in servers:
            unavailable[pname].update(srv.hello["unavailable"])
        # Chunks of rounds, alternating between the servers; within a chunk the methods
        # alternate call by call (shuffled order), so load that comes and goes on a shared
        # machine hits every method and both parents alike.
        for first in range(0, rounds, chunk):
            n = min(chunk, rounds - first)
            for pname, srv in servers:
                # Forking from 2 GiB costs ~100 ms a call: sample it every k-th round only.
                every = {"popen_preexec": fork_every} if pname == "big" else {}
                reply = srv.ask({"cmd": "rounds", "first": first, "n": n, "every": every})
                for m, xs in reply["samples"].items():
                    samples[pname].setdefault(m, []).extend(xs)
                for m, xs in reply["cpu"].items():
                    cpu[pname].setdefault(m, []).extend(xs)
            if (first // chunk) % 6 == 5 or first + n >= rounds:
                log(f"spawn+wait: round {first + n}/{rounds}")
        out: JSONDict = {"labels": LABELS, "order": ORDER, "parents": {},
                         "fork_every": fork_every}
        for pname, srv in parents.items():
            out["parents"][pname] = {
                "rss_kib": srv.hello["rss_kib"],
                "touched_mib": srv.hello["touched_mib"],
                "unavailable": unavailable[pname],
                "samples": samples[pname],
                "cpu": cpu[pname],
            }
        out["seconds"] = time.monotonic() - t0
        return out
    finally:
        for _, srv in servers:
            srv.close()


def _main(argv: list[str]) -> Any:
    if len(argv) >= 3 and argv[0] == "--serve":
        serve(int(argv[1]), argv[2].split(","))
        return 0
    print(json.dumps(run({"quick": "--quick" in argv}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
