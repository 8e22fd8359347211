"""Section 4: cascade latency. A parent holding a tree of 100 processes is SIGKILLed; how long
until the whole tree is gone?

The worker running this file makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so
every process of the tree that loses its parent comes back to it. Per sample it starts a
Python parent P (through ``tether.spawn_lifelined``, so the worker holds P's pidfd), and P
starts ``/bin/sh`` building a tree of 100 processes: the shell, 9 subshells, 10 ``sleep 60``
under each. Everyone reports on a pipe when their part exists; then the worker reads
CLOCK_MONOTONIC, sends SIGKILL to P through its pidfd, and reaps (SIGCHLD blocked, taken with
``sigtimedwait``; ``waitid(P_ALL, WEXITED|WNOHANG)``) until the kernel answers ECHILD: no
descendant is left, live or zombie. The time to that answer is the sample.

P runs the tree under ``tether.spawn`` in each containment mode, and, as the baseline,
under ``subprocess.Popen`` with ``preexec_fn`` setting ``PR_SET_PDEATHSIG=SIGKILL`` (the usual
workaround). That kills only P's direct child; the worker counts what is still alive after a
settle time, then cleans up what it owns: the survivors are its own (orphaned) children, still
in the shell's process group, whose id cannot be recycled while they live unreaped, so one
``killpg`` on that group reaches exactly them.

A *floor* row shows what the kernel itself needs: the worker SIGKILLs P and the tree's
process group at the same instant (no lifeline, no guard), then reaps until ECHILD.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

from _common import JSONDict, log, worker_env, worker_main

PR_SET_CHILD_SUBREAPER = 36
READY_FD = 9

TREE = (
    "i=0\n"
    "while [ $i -lt {k} ]; do\n"
    "  ( j=0; while [ $j -lt {m} ]; do sleep 60 & j=$((j+1)); done; echo s >&9; wait ) &\n"
    "  i=$((i+1))\n"
    "done\n"
    "echo t >&9\n"
    "wait\n"
)

PARENT = r"""
import ctypes, os, signal, subprocess, sys
mode, fd, tree = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.dup2(fd, 9)
os.close(fd)
argv = ["/bin/sh", "-c", tree]
if mode == "floor":
    child = subprocess.Popen(argv, pass_fds=(9,), process_group=0)
elif mode == "popen_pdeathsig":
    libc = ctypes.CDLL(None, use_errno=True)
    def pdeathsig():
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    child = subprocess.Popen(argv, pass_fds=(9,), preexec_fn=pdeathsig, process_group=0)
else:
    import tether
    child = tether.spawn(argv, contain=mode, pass_fds=(9,))
os.write(9, ("P %d\n" % child.pid).encode())
os.close(9)
while True:
    signal.pause()
"""

LABELS = {
    "group": "tether.spawn(contain='group')",
    "cgroup": "tether.spawn(contain='cgroup')",
    "pidns": "tether.spawn(contain='pidns')",
    "popen_pdeathsig": "Popen(preexec_fn=PDEATHSIG)",
    "floor": "floor: observer kills P and the tree",
}


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _reap(deadline: float, count: list[int], *, until_empty: bool = True) -> bool:
    """Reap descendants until ECHILD (True) or the deadline (False). SIGCHLD must be blocked."""
    while True:
        while True:
            try:
                res = os.waitid(  # noqa: TET302  the subreaper oracle: "anyone left?"
                    os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                return True
            if res is None or res.si_pid == 0:
                break
            count[0] += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        signal.sigtimedwait({signal.SIGCHLD}, remaining)


def _read_ready(fd: int, lines: int, timeout: float) -> int:
    """Read until ``lines`` newline-terminated reports arrived; return P's report (the pid)."""
    buf = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while buf.count(b"\n") < lines:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            raise TimeoutError(f"tree not ready after {timeout} s: {buf!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"tree setup failed: {buf!r}")
        buf += chunk
    for line in buf.split(b"\n"):
        if line.startswith(b"P "):
            return int(line.split()[1])
    raise RuntimeError(f"no report from the parent: {buf!r}")


def one(mode: str, k: int, m: int, settle: float) -> JSONDict:
    import tether

    size = 1 + k + k * m
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        parent = tether.spawn_lifelined(
            [sys.executable, "-c", PARENT, mode, str(w), TREE.format(k=k, m=m)],
            pass_fds=(w,), env=worker_env(),
        )
    finally:
        os.close(w)
    try:
        tree_pid = _read_ready(r, 1 + k + 1, 60.0)
        count = [0]
        t0 = time.monotonic()
        if mode == "floor":
            # The kernel's own cost of ending and reaping these processes, no cascade: the
            # tree is our grandchildren's group, alive and unreaped, so its id is exact.
            os.killpg(tree_pid, signal.SIGKILL)  # noqa: TET201  live group we started
        parent.pidfd.send_signal(signal.SIGKILL)
        if mode == "popen_pdeathsig":
            _reap(time.monotonic() + settle, count)
            survivors = 1 + size - count[0]
            if survivors > 0:
                # Our own orphans, all still in the shell's group (it cannot be recycled
                # while they live unreaped: only we reap them, and we are not reaping now).
                os.killpg(tree_pid, signal.SIGKILL)  # noqa: TET201  group of our own orphans
            done = _reap(time.monotonic() + 30.0, count)
            return {"seconds": None, "survivors": survivors, "reaped": count[0],
                    "clean": done}
        done = _reap(t0 + 30.0, count)
        t1 = time.monotonic()
        if not done:
            raise RuntimeError(f"{mode}: the tree was not gone after 30 s "
                               f"({count[0]} of {size + 2} reaped)")
        return {"seconds": t1 - t0, "survivors": 0, "reaped": count[0], "clean": True}
    finally:
        os.close(r)
        parent.pidfd.close()
        parent.lifeline.close()


def measure(params: JSONDict) -> JSONDict:
    from tether._kernel.cgroup import cgroup_unavailable_reason
    from tether._tree.modes import pidns_unavailable_reason

    quick = bool(params.get("quick"))
    samples = int(params.get("samples", 1 if quick else 15))
    k, m = int(params.get("k", 9)), int(params.get("m", 10))
    settle = float(params.get("settle", 0.3))
    _become_subreaper()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    modes = list(LABELS)
    unavailable: dict[str, str] = {}
    for mode, reason in (("cgroup", cgroup_unavailable_reason()),
                         ("pidns", pidns_unavailable_reason())):
        if reason is not None:
            unavailable[mode] = reason
            modes.remove(mode)
    results: dict[str, list[JSONDict]] = {mode: [] for mode in modes}
    t_start = time.monotonic()
    for mode in modes if not quick else ():  # warm-up (page cache, first cgroup, ...)
        one(mode, k, m, settle)
    for i in range(samples):
        order = modes[i % len(modes):] + modes[: i % len(modes)]
        for mode in order:
            results[mode].append(one(mode, k, m, settle))
        log(f"cascade: round {i + 1}/{samples}")
    return {"labels": LABELS, "tree_size": 1 + k + k * m, "results": results,
            "unavailable": unavailable, "settle": settle,
            "seconds": time.monotonic() - t_start}


if __name__ == "__main__":
    worker_main(measure)
