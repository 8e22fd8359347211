"""Section 3: exit-notification latency (the child exits -> the parent's wait returns).

What is measured, exactly: the child says "ready", reads a delay D from its stdin, sleeps D,
then reads CLOCK_MONOTONIC, writes that timestamp to its stdout pipe and calls ``_exit(0)`` at
once. The parent wrote D and went straight into the wait being measured, so it is blocked
there long before the child exits. When the wait returns, the parent reads CLOCK_MONOTONIC
again. The latency is the difference: the child's own exit path (kernel teardown of the
process, identical for every method) plus the notification and the waiter's wake-up, which
is what differs between the methods. No helper thread is involved, so no GIL hand-over skews
a method.

The child is a ten-line static C program compiled at start-up when a C compiler is present
(its exit costs a few tens of microseconds), else a ``python -S -I`` one-liner (whose exit,
the teardown of a Python address space, adds ~0.5 ms to every method alike and so dilutes
the ratios). The report says which one was used.

For ``Popen.wait(timeout=...)`` the lag depends on how long the wait has been running (it
sleeps 0.5 ms, 1, 2, ... up to 50 ms between waitpid(WNOHANG) polls), so it is measured twice:
with the same short child lifetimes as everyone else (D uniform in 2-20 ms), and with
lifetimes of 100-200 ms, where its sleep has reached the 50 ms cap (the common case for real
children). ``Pidfd.wait()`` is measured with both lifetimes too, so each ratio compares like
with like.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from _common import JSONDict, build_c, log, worker_main

PY_CHILD = (
    "import os,time\n"
    "os.write(1,b'r')\n"
    "d=int.from_bytes(os.read(0,8),'little')\n"
    "time.sleep(d/1e9)\n"
    "t=time.monotonic_ns()\n"
    "os.write(1,t.to_bytes(8,'little'))\n"
    "os._exit(0)\n"
)
C_CHILD = r"""
#include <stdint.h>
#include <time.h>
#include <unistd.h>
int main(void)
{
    int64_t d, t;
    struct timespec ts;
    if (write(1, "r", 1) != 1 || read(0, &d, 8) != 8)
        _exit(1);
    ts.tv_sec = d / 1000000000;
    ts.tv_nsec = d % 1000000000;
    while (nanosleep(&ts, &ts) != 0)
        ;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (write(1, &t, 8) != 8)
        _exit(1);
    _exit(0);
}
"""

CHILD_ARGV: list[str] = [sys.executable, "-S", "-I", "-c", PY_CHILD]


LABELS = {
    "pidfd_wait": "tether Pidfd.wait()",
    "bare_poll": "bare select.poll(pidfd)",
    "poll_reap": "bare poll(pidfd) + waitid(WNOHANG) reap",
    "waitid": "bare os.waitid(P_PIDFD) (blocking)",
    "popen_wait": "Popen.wait() (blocking waitpid)",
    "child_wait": "tether.spawn(group) Child.wait()",
    "popen_timeout": "Popen.wait(timeout=60)",
    "pidfd_wait_long": "tether Pidfd.wait(), 100-200 ms child",
    "popen_timeout_long": "Popen.wait(timeout=60), 100-200 ms child",
}
SHORT = ["pidfd_wait", "bare_poll", "poll_reap", "waitid", "popen_wait", "child_wait",
         "popen_timeout"]
LONG = ["pidfd_wait_long", "popen_timeout_long"]


@dataclass
class Kid:
    """One prepared child: blocked, waiting for its delay."""

    go: int          # write end of its stdin
    res: int         # read end of its stdout
    wait: Callable[[], object]
    cleanup: Callable[[], object]


def _pipes() -> tuple[int, int, int, int]:
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    return go_r, go_w, res_r, res_w


def _make(method: str) -> Kid:
    import tether

    go_r, go_w, res_r, res_w = _pipes()
    base = method.removesuffix("_long")
    try:
        if base in ("pidfd_wait", "bare_poll", "poll_reap", "waitid"):
            s = tether.spawn_lifelined(CHILD_ARGV, stdin=go_r, stdout=res_w)
            pidfd = s.pidfd

            def cleanup_s() -> None:
                pidfd.wait()
                pidfd.close()
                s.lifeline.close()

            if base == "pidfd_wait":
                kid = Kid(go_w, res_r, pidfd.wait, cleanup_s)
            elif base == "bare_poll":
                poller = select.poll()
                poller.register(pidfd.fileno(), select.POLLIN)
                kid = Kid(go_w, res_r, poller.poll, cleanup_s)
            elif base == "poll_reap":
                fd = pidfd.fileno()
                poller = select.poll()
                poller.register(fd, select.POLLIN)

                def poll_reap() -> None:
                    poller.poll()
                    os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)

                def cleanup_pr() -> None:
                    pidfd.close()  # reaped already: close() finds ECHILD, fine
                    s.lifeline.close()

                kid = Kid(go_w, res_r, poll_reap, cleanup_pr)
            else:
                fd = pidfd.fileno()

                def waitid() -> None:
                    os.waitid(os.P_PIDFD, fd, os.WEXITED)

                def cleanup_w() -> None:
                    pidfd.close()  # already reaped by waitid: close() finds ECHILD, fine
                    s.lifeline.close()

                kid = Kid(go_w, res_r, waitid, cleanup_w)
        elif base in ("popen_wait", "popen_timeout"):
            p = subprocess.Popen(  # noqa: TET102  baseline
                CHILD_ARGV, stdin=go_r, stdout=res_w)
            if base == "popen_wait":
                kid = Kid(go_w, res_r, p.wait, p.wait)
            else:
                kid = Kid(go_w, res_r, lambda: p.wait(timeout=60), p.wait)
        elif base == "child_wait":
            c = tether.spawn(CHILD_ARGV, stdin=go_r, stdout=res_w, contain="group")
            kid = Kid(go_w, res_r, c.wait, c.wait)
        else:
            raise ValueError(method)
    except BaseException:
        for fd in (go_w, res_r):
            os.close(fd)
        raise
    finally:
        os.close(go_r)
        os.close(res_w)
    return kid


def _ready(kid: Kid) -> None:
    if os.read(kid.res, 1) != b"r":
        raise RuntimeError("latency child did not start")


def _measure(kid: Kid, delay_s: float) -> float:
    """Release the child (it exits after delay_s) and time its exit -> our wait returning."""
    os.write(kid.go, int(delay_s * 1e9).to_bytes(8, "little"))
    kid.wait()
    t1 = time.monotonic_ns()
    data = os.read(kid.res, 8)
    if len(data) != 8:
        raise RuntimeError("latency child did not report its exit time")
    t0: int = struct.unpack("<q", data)[0]
    kid.cleanup()
    os.close(kid.go)
    os.close(kid.res)
    return (t1 - t0) / 1e9


def measure(params: JSONDict) -> JSONDict:
    quick = bool(params.get("quick"))
    rounds = int(params.get("rounds", 3 if quick else 50))
    per_round = int(params.get("per_round", 3))
    long_rounds = int(params.get("long_rounds", 2 if quick else 30))
    long_per_round = int(params.get("long_per_round", 2))
    rng = random.Random(7)
    samples: dict[str, list[float]] = {m: [] for m in LABELS}
    t_start = time.monotonic()
    tmpdir = tempfile.mkdtemp(prefix="tether-bench-")
    try:
        exe = None if params.get("python_child") else build_c(tmpdir, "exitstamp", C_CHILD)
        if exe is not None:
            CHILD_ARGV[:] = [exe]
            child = "static C program (exits in tens of microseconds)"
        else:
            child = "python -S -I one-liner (no C compiler found)"
        log(f"exit latency: child is a {child}")
        samples = _run(rng, rounds, per_round, long_rounds, long_per_round)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return {"labels": LABELS, "short": SHORT, "long": LONG, "samples": samples,
            "child": child, "seconds": time.monotonic() - t_start}


def _run(rng: random.Random, rounds: int, per_round: int, long_rounds: int,
         long_per_round: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {m: [] for m in LABELS}

    def batch(method: str, n: int, lo: float, hi: float) -> None:
        kids = [_make(method) for _ in range(n)]
        for kid in kids:
            _ready(kid)
        for kid in kids:
            samples[method].append(_measure(kid, rng.uniform(lo, hi)))

    # Warm-up: one of each (imports, first-spawn costs).
    for m in SHORT:
        batch(m, 1, 0.002, 0.003)
    samples = {m: [] for m in LABELS}
    for r in range(rounds):
        order = SHORT[r % len(SHORT):] + SHORT[: r % len(SHORT)]
        for m in order:
            batch(m, per_round, 0.002, 0.020)
        if r % 10 == 9 or r + 1 == rounds:
            log(f"exit latency: short-lived round {r + 1}/{rounds}")
    for r in range(long_rounds):
        order = LONG if r % 2 == 0 else LONG[::-1]
        for m in order:
            batch(m, long_per_round, 0.100, 0.200)
        if r % 10 == 9 or r + 1 == long_rounds:
            log(f"exit latency: long-lived round {r + 1}/{long_rounds}")
    return samples


if __name__ == "__main__":
    worker_main(measure)
