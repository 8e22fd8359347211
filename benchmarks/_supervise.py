"""Section 5: the supervisor's CPU per child exit, with N children alive at once.

Per method and round: start N children that each block reading a shared pipe, then sleep a
private offset (uniform over N milliseconds) and exit, so exits arrive one by one, as they do
for real supervised children, not in one burst. Everything a method needs (registration,
threads) is set up before the phase. The phase starts when the parent closes the pipe's write
end and ends when the method has seen and reaped all N; its cost is this process's CPU time
(getrusage(RUSAGE_SELF) user+sys, all threads) over the phase, divided by N.
``RUSAGE_CHILDREN`` over the same phase is shown for information: the CPU of what was reaped
(the children, and for ``tether.spawn`` their guards).

Methods:
  tether.spawn (sync)  one guarded tree per child; an epoll loop over every Child's
                       ``Child.fileno()`` (the guard's control socket), ``Child.poll()`` on
                       readiness (epoll, like the pidfd loops: a select.poll over N fds would
                       cost O(N) kernel time per wake-up and measure the loop, not tether).
  Pidfd.poll + epoll   spawn_lifelined children; epoll on the pidfds, ``Pidfd.poll()`` (reaps),
                       ``close()`` both handles.
  raw epoll + waitid   spawn_lifelined children; epoll on the pidfds, ``os.waitid(P_PIDFD)``
                       with WNOHANG: the floor for a pidfd supervisor written in Python.
  SIGCHLD + waitpid    posix_spawn children; SIGCHLD blocked and taken with sigwaitinfo, then
                       waitpid(-1, WNOHANG) until nothing is left to reap.
  thread per child     subprocess.Popen children; one thread blocked in Popen.wait() each.
"""

from __future__ import annotations

import os
import random
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import JSONDict, build_c, cpu_seconds, log, raise_nofile, worker_main

SH = "/bin/sh"
SCRIPT = 'read x; exec sleep "$1"'
# The child when a C compiler is present: block until EOF on stdin, sleep argv[1] seconds,
# exit. A static binary that does nothing else keeps the children's own CPU (which competes
# with the supervisor on a small machine) negligible; the fallback is the shell script above.
C_CHILD = r"""
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    char buf[64];
    double s = argc > 1 ? atof(argv[1]) : 0.0;
    struct timespec ts;
    while (read(0, buf, sizeof buf) > 0)
        ;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0)
        ;
    _exit(0);
}
"""
_helper: list[str] = []

LABELS = {
    "tether_spawn": "tether.spawn(group) + epoll + Child.poll()",
    "pidfd_poll": "spawn_lifelined + epoll + Pidfd.poll()",
    "raw_epoll": "spawn_lifelined + epoll + os.waitid (raw)",
    "sigchld": "posix_spawn + SIGCHLD + waitpid(-1)",
    "threads": "Popen + one thread per child .wait()",
}


def _argv(offset: float) -> list[str]:
    if _helper:
        return [_helper[0], f"{offset:.4f}"]
    return [SH, "-c", SCRIPT, "sh", f"{offset:.4f}"]


class Phase:
    """Set up N children; run() releases them and supervises until all are reaped."""

    def __init__(self, n: int, offsets: list[float]) -> None:
        self.n = n
        self.offsets = offsets
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        self.null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.cleanup: Callable[[], object] = lambda: None

    def release(self) -> None:
        os.close(self.w)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.null)


def _tether_spawn(ph: Phase) -> Callable[[], None]:
    import tether

    children = [tether.spawn(_argv(o), stdin=ph.r, stdout=ph.null) for o in ph.offsets]
    ep = select.epoll(len(children))
    by_fd: dict[int, Any] = {}
    for c in children:
        fd = c.fileno()
        by_fd[fd] = c
        ep.register(fd, select.EPOLLIN)

    def run() -> None:
        ph.release()
        left = len(by_fd)
        while left:
            for fd, _ in ep.poll():
                c = by_fd.get(fd)
                if c is None:
                    continue
                # Unregister first: Child.poll() closes the socket once the tree has ended.
                ep.unregister(fd)
                if c.poll() is not None:
                    del by_fd[fd]
                    left -= 1
                else:
                    ep.register(fd, select.EPOLLIN)
        ep.close()

    return run


def _lifelined(ph: Phase, raw: bool) -> Callable[[], None]:
    import tether

    spawned = [tether.spawn_lifelined(_argv(o), stdin=ph.r, stdout=ph.null)
               for o in ph.offsets]
    ep = select.epoll(len(spawned))
    by_fd = {s.pidfd.fileno(): s for s in spawned}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)

    def run_raw() -> None:
        ph.release()
        left = len(by_fd)
        while left:
            for fd, _ in ep.poll():
                res = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                if res is not None and res.si_pid != 0:
                    ep.unregister(fd)
                    left -= 1
        ep.close()
        # After the phase (in cleanup): the handles of these already reaped children.
        def cleanup() -> None:
            for s in spawned:
                s.pidfd.close()
                s.lifeline.close()

        ph.cleanup = cleanup

    def run_pidfd() -> None:
        ph.release()
        left = len(by_fd)
        while left:
            for fd, _ in ep.poll():
                s = by_fd[fd]
                if s.pidfd.poll() is not None:
                    ep.unregister(fd)
                    s.pidfd.close()
                    s.lifeline.close()
                    left -= 1
        ep.close()

    return run_raw if raw else run_pidfd


def _sigchld(ph: Phase) -> Callable[[], None]:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    pids: set[int] = set()
    for o in ph.offsets:
        argv = _argv(o)
        pid = os.posix_spawn(  # noqa: TET103  baseline
            argv[0], argv, os.environ, setsigmask=(),
            file_actions=[(os.POSIX_SPAWN_DUP2, ph.r, 0), (os.POSIX_SPAWN_DUP2, ph.null, 1)])
        pids.add(pid)
    while signal.sigtimedwait({signal.SIGCHLD}, 0) is not None:  # drop stale ones
        pass

    def run() -> None:
        ph.release()
        try:
            while pids:
                signal.sigwaitinfo({signal.SIGCHLD})
                while True:
                    try:
                        pid, _ = os.waitpid(-1, os.WNOHANG)  # noqa: TET301  baseline
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    pids.discard(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})

    return run


def _threads(ph: Phase) -> Callable[[], None]:
    procs = [subprocess.Popen(  # noqa: TET102  baseline
        _argv(o), stdin=ph.r, stdout=ph.null) for o in ph.offsets]
    threads = [threading.Thread(target=p.wait, daemon=True) for p in procs]
    for t in threads:
        t.start()

    def run() -> None:
        ph.release()
        for t in threads:
            t.join()

    return run


SETUP: dict[str, Callable[[Phase], Callable[[], None]]] = {
    "tether_spawn": _tether_spawn,
    "pidfd_poll": lambda ph: _lifelined(ph, raw=False),
    "raw_epoll": lambda ph: _lifelined(ph, raw=True),
    "sigchld": _sigchld,
    "threads": _threads,
}


def one(method: str, n: int, spread: float, rng: random.Random) -> JSONDict:
    offsets = [rng.uniform(0.0, spread) for _ in range(n)]
    ph = Phase(n, offsets)
    try:
        t_setup = time.monotonic()
        run = SETUP[method](ph)
        setup_s = time.monotonic() - t_setup
        time.sleep(0.2)  # every child blocked in read(), every waiter in place
        c0, k0, t0 = cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
        run()
        c1, k1, t1 = cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
        ph.cleanup()
    finally:
        ph.close()
    return {"cpu_per_exit": (c1 - c0) / n, "children_cpu_per_exit": (k1 - k0) / n,
            "phase_s": t1 - t0, "setup_s": setup_s}


def measure(params: JSONDict) -> JSONDict:
    quick = bool(params.get("quick"))
    n = int(params.get("n", 50 if quick else 1000))
    rounds = int(params.get("rounds", 1 if quick else 3))
    spread = float(params.get("spread", n * 0.001))
    limit = raise_nofile(6 * n + 256)
    if limit < 6 * n + 256:
        n = max(10, (limit - 256) // 6)
    rng = random.Random(3)
    tmpdir = tempfile.mkdtemp(prefix="tether-bench-")
    try:
        exe = None if params.get("shell_child") else build_c(tmpdir, "waitexit", C_CHILD)
        if exe is not None:
            _helper[:] = [exe]
            child = "static C program: read stdin to EOF, sleep its offset, exit"
        else:
            child = f"/bin/sh -c '{SCRIPT}' (no C compiler found)"
        log(f"supervise: child is a {child}")
        out = _run(n, rounds, spread, rng)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    out["child"] = child
    return out


def _run(n: int, rounds: int, spread: float, rng: random.Random) -> JSONDict:
    methods = list(LABELS)
    results: dict[str, list[JSONDict]] = {m: [] for m in methods}
    t_start = time.monotonic()
    for m in methods:  # warm-up, small
        one(m, 10, 0.01, rng)
    for r in range(rounds):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            results[m].append(one(m, n, spread, rng))
            log(f"supervise: round {r + 1}/{rounds}: {m} done")
    return {"labels": LABELS, "n": n, "spread_s": spread, "rounds": rounds,
            "results": results, "seconds": time.monotonic() - t_start}


if __name__ == "__main__":
    worker_main(measure)
