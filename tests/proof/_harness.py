"""Shared machinery of the proof suites.

* sizes: smoke by default, full with ``TETHER_FULL=1``;
* the oracle is tests/oracle.py, the one every test uses (the subreaper and namespace
  observers); nothing here judges whether a process is left;
* the pen: a private cgroup v2 directory per test. Every process a proof test starts (the
  parents under attack, and whatever a deliberately broken spawner makes) is started *into*
  it (CLONE_INTO_CGROUP), and tether's own per-tree directories go below it
  (``TETHER_CGROUP_ROOT``). The pen never takes part in a verdict: it is how the test cleans
  up after a verdict (``cgroup.kill``), so that a broken spawner, or a tether bug, cannot
  leave a process behind, and no process is ever killed by name or by number. It also
  isolates the cgroup-directory counts from other tether users on the machine;
* results: each suite records its numbers (printed, listed in the terminal summary, and
  appended as JSON lines to ``$TETHER_PROOF_RESULTS`` when set).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import secrets
import select
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple

import pytest

import tether
from conftest import require_mode, rmdir_cgroup_tree
from oracle import Reaped, cgroup_populated, reap_until
from tether._kernel import cgroup as _cgroup
from tether._kernel import cgroup_ahead
from tether._kernel.spawn import clone_with_stdio
from tether._kernel.spec import SpawnSpec

FULL: Final = os.environ.get("TETHER_FULL", "") not in ("", "0")
PY: Final = sys.executable
SRC: Final = os.path.dirname(os.path.dirname(os.path.abspath(tether.__file__)))
F_SETPIPE_SZ: Final = 1031


def size(smoke: int, full: int) -> int:
    """The smoke count, or the full one under TETHER_FULL=1."""
    return full if FULL else smoke


def guarded_modes() -> list[str]:
    """Every containment mode with a guard that this machine has (group always)."""


    out = ["group"]
    for mode in ("cgroup", "pidns"):
        try:
            require_mode(mode)
        except pytest.skip.Exception:
            continue
        out.append(mode)
    return out


def python_env(**extra: str) -> dict[str, str]:
    """The environment for Python children: they import this same tether."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TETHER_PROOF_DIE_AT", None)
    env.update(extra)
    return env


# -- results --------------------------------------------------------------------------------------

RESULTS: list[str] = []


def record(suite: str, summary: str, **numbers: object) -> None:
    """Publish a suite's numbers: printed, in the terminal summary, and as a JSON line."""
    line = f"{suite}{' (full)' if FULL else ' (smoke)'}: {summary}"
    RESULTS.append(line)
    print(line)
    path = os.environ.get("TETHER_PROOF_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"suite": suite, "full": FULL, "summary": summary, **numbers},
                               default=str) + "\n")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ms_summary(seconds: Sequence[float]) -> str:
    """'p50 X ms, p99 Y ms, max Z ms' of durations given in seconds."""
    if not seconds:
        return "no samples"
    return (f"p50 {percentile(seconds, 50) * 1e3:.2f} ms, p99 {percentile(seconds, 99) * 1e3:.2f}"
            f" ms, max {max(seconds) * 1e3:.2f} ms")


# -- resident memory ----------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's current resident set (``/proc/self/statm``, our own process)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the pen: a private cgroup for cleanup and for exact directory counts -----------------------


class PenUnavailable(Exception):
    pass


class Pen:
    """A private cgroup v2 directory that every process of one proof test is started into.

    Processes start in a "run" sub-directory. After a ``cgroup.kill`` of the pen a fresh run
    directory is used: on 6.18 a CLONE_INTO_CGROUP child is SIGKILLed at birth when its
    destination once received cgroup.kill and the caller's cgroup did not (kill_seq
    mismatch; see docs/proof.md), so a killed directory is never a destination again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.runs = 0
        self.fd = -1
        self._killed = False
        self._new_run()

    @classmethod
    def create(cls) -> Pen:
        why = _cgroup.cgroup_unavailable_reason()
        if why is not None:
            raise PenUnavailable(why)
        root = _cgroup.cgroup_root()
        path = os.path.join(root, f"tether-proof-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(path, 0o755)
        try:
            return cls(path)
        except BaseException:
            rmdir_cgroup_tree(path)
            raise

    def _new_run(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.runs += 1
        run = os.path.join(self.path, f"run-{self.runs}")
        os.mkdir(run, 0o755)
        self.fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._killed = False

    @property
    def trees(self) -> str:
        """Where tether makes per-tree directories when TETHER_CGROUP_ROOT is the pen."""
        return os.path.join(self.path, _cgroup.PARENT_NAME)

    def tree_dirs(self) -> set[str]:
        try:
            names = {n for n in os.listdir(self.trees) if n.startswith("t-")}
        except FileNotFoundError:
            return set()
        # (not the next tree's directory, made ahead by this process: kept until its exit)
        return names - {os.path.basename(p) for p in cgroup_ahead.kept()}

    def populated(self) -> bool:
        return cgroup_populated(self.path)

    def env(self) -> dict[str, str]:
        return {_cgroup.ROOT_ENV: self.path}

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Iterable[int] = (),
    ) -> tether.Spawned:
        """spawn_lifelined, started directly inside the pen (CLONE_INTO_CGROUP)."""
        if self._killed:
            self._new_run()
        spec = SpawnSpec.build(argv, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                               pass_fds=pass_fds)
        return clone_with_stdio(spec, cgroup_fd=self.fd)

    def kill(self) -> None:
        """SIGKILL everything in the pen and below (cgroup.kill): the cleanup, never a verdict."""
        _cgroup.kill(self.path)
        self._killed = True

    def clean(self, timeout: float = 5.0) -> Reaped:
        """Kill whatever is in the pen, reap it, and remove the tree directories below it."""
        if self.populated():
            self.kill()
            _cgroup.wait_empty(self.path, timeout)
        seen = reap_until(timeout)
        _cgroup.sweep(self.trees)
        return seen

    def destroy(self) -> None:
        try:
            self.clean()
        finally:
            os.close(self.fd)
            rmdir_cgroup_tree(self.path)


# -- line-oriented reports from children -----------------------------------------------------------


class Marker(NamedTuple):
    """One line a parent under attack wrote: the point it reached, when, and a detail."""

    name: str
    ns: int
    arg: str

    @classmethod
    def parse(cls, line: str) -> Marker:
        name, _, rest = line.partition(" ")
        ns, _, arg = rest.partition(" ")
        return cls(name, int(ns or 0), arg)


def report_pipe() -> tuple[int, int]:
    """A pipe for children's reports, as large as the kernel allows (so no writer blocks)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    for size_ in (1 << 20, 1 << 16):
        try:
            fcntl.fcntl(r, F_SETPIPE_SZ, size_)
            break
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EBUSY):
                raise
    return r, w


class Lines:
    """Non-blocking line reader over a pipe; keeps every line it read, in order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = b""
        self.lines: list[str] = []
        self.eof = False
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def _read_available(self) -> None:
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            *complete, self.buf = self.buf.split(b"\n")
            self.lines.extend(c.decode(errors="replace") for c in complete)

    def wait_for(self, pred: Callable[[str], bool], timeout: float, start: int = 0) -> int | None:
        """Index of the first line from ``start`` on that satisfies ``pred``; None on
        timeout or EOF."""
        deadline = time.monotonic() + timeout
        checked = start
        while True:
            self._read_available()
            while checked < len(self.lines):
                if pred(self.lines[checked]):
                    return checked
                checked += 1
            remaining = deadline - time.monotonic()
            if self.eof or remaining <= 0:
                return None
            self._poller.poll(max(1, int(remaining * 1000)))

    def drain(self, timeout: float = 0.0) -> list[str]:
        """Everything readable now (or until EOF, waiting at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self._read_available()
            remaining = deadline - time.monotonic()
            if self.eof or remaining <= 0:
                return self.lines
            self._poller.poll(max(1, int(remaining * 1000)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# A snippet for children that report their own fd table: every open fd with what it is
# (device, inode, access mode), read by the process itself from its own /proc/self.
FD_TABLE_FN: Final = r'''
def fd_table():
    import fcntl, os
    out = []
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        try:
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            st = os.fstat(fd)
        except OSError:
            continue
        out.append([fd, st.st_dev, st.st_ino, fl & os.O_ACCMODE])
    return sorted(out)
'''
