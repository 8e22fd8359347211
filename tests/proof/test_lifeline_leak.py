"""Lifeline-leak torture: a parent spawns lifeline-aware children from several threads at
once (spawn_lifelined children that attach(), and guarded ones), while another thread
os.fork()s children that never exec (siblings: the classic holders of a leaked write end),
and run_in_fork children run; then the parent is SIGKILLed.

The guarantees under attack:

* every lifeline-aware child sees EOF at once, whatever its siblings hold: each one (or its
  guard) must be dead and reaped within 50 ms of the kill, while the forked siblings are
  still alive. attach() makes the kernel SIGKILL the child on EOF, so a child's death time
  is read from the subreaper oracle: the moment it is reaped, relative to the kill;
* every child's fd table is exactly what was asked for. Each child reports its own table
  (fd, device, inode, access mode; read by itself from its own /proc/self):
  - exec'd children (spawn_lifelined, and programs under a guard): exactly {0, 1, 2,
    lifeline}, and the lifeline is the read end of *its own* pipe (same inode as the
    writer the parent holds for it);
  - forked children (run_in_fork, and the raw os.fork siblings): they inherit the parent's
    table by nature of fork, but hold no lifeline write end at all (none of the inodes of
    the parent's writers, open for writing), and a run_in_fork child's lifeline is its own.

The same checker is run against a deliberately broken spawner written here (os.pipe made
inheritable + os.fork + exec, no registry, no atfork hygiene): it must report late EOF,
extra fds, and siblings holding writers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from oracle import reap_until

from ._harness import (
    FD_TABLE_FN,
    PY,
    Lines,
    Pen,
    ms_summary,
    percentile,
    python_env,
    record,
    report_pipe,
    size,
)

CHILD = FD_TABLE_FN + r'''
import json, os, sys, time
import tether
from tether._kernel.lifeline import lifeline_fd
tether.attach()
os.write(1, (json.dumps({"who": "child", "tag": sys.argv[1], "pid": os.getpid(),
                         "lifeline": lifeline_fd(),
                         "fds": fd_table()}) + "\n").encode())
time.sleep(300)
'''

PARENT = FD_TABLE_FN + r'''
import json, os, random, sys, threading, time
import tether
from tether._kernel.lifeline import lifeline_fd

kind = sys.argv[1]
n_threads, per_thread, n_keep, n_rif, sib_fd = map(int, sys.argv[2:7])
CHILD = sys.argv[7]
PY = sys.executable
tether.attach()  # safety net: if the test dies, so do we


def say(**obj):
    os.write(1, (json.dumps(obj) + "\n").encode())


def writer_report(pid, w):
    st = os.fstat(w)
    say(who="writer", pid=pid, dev=st.st_dev, ino=st.st_ino)


def rif_body():
    say(who="rif", pid=os.getpid(), lifeline=lifeline_fd(),
        fds=fd_table())
    time.sleep(300)


class Tether:
    def exec_child(self, tag):
        s = tether.spawn_lifelined([PY, "-S", "-c", CHILD, tag])
        writer_report(s.pid, s.lifeline.fileno())
        return s

    def guarded_child(self, tag):
        c = tether.spawn([PY, "-S", "-c", CHILD, tag], contain="group")
        say(who="guard", pid=c.pid, guard=c.pidfd.info().ppid)
        return c

    def fork_child(self):
        s = tether.run_in_fork(rif_body)
        writer_report(s.pid, s.lifeline.fileno())
        return s


class Broken:
    """The orphan bug, on purpose: a plain inheritable pipe as the lifeline, os.fork, no
    registry of write ends, no atfork hygiene."""

    def exec_child(self, tag):
        r, w = os.pipe()
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(r, 3)
                os.execve(PY, [PY, "-S", "-c", CHILD, tag],
                          dict(os.environ, TETHER_LIFELINE_FD="3"))
            finally:
                os._exit(127)
        os.close(r)
        writer_report(pid, w)
        return pid, w

    guarded_child = exec_child

    def fork_child(self):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.environ["TETHER_LIFELINE_FD"] = str(r)
                tether.attach(r)
                rif_body()
            finally:
                os._exit(0)
        os.close(r)
        writer_report(pid, w)
        return pid, w


spawner = Tether() if kind == "tether" else Broken()
held = []
done = threading.Event()


def forker():
    # Fork siblings that never exec, all through the spawning: every third one stays alive
    # (attached to the *test's* pipe, so the test decides when it goes), the rest report
    # their fd table and exit at once.
    kept = forks = 0
    while not done.is_set() or kept < n_keep:
        keep = kept < n_keep and forks % 3 == 0
        forks += 1
        pid = os.fork()
        if pid == 0:
            try:
                if keep:
                    tether.attach(sib_fd)
                say(who="sibling", pid=os.getpid(), keep=keep, fds=fd_table())
                if keep:
                    time.sleep(300)
            finally:
                os._exit(0)
        if keep:
            kept += 1
        else:
            os.waitpid(pid, 0)
        time.sleep(random.uniform(0, 0.002))


def worker(t):
    for i in range(per_thread):
        if t == 0:
            held.append(spawner.guarded_child("guarded-%d-%d" % (t, i)))
        else:
            held.append(spawner.exec_child("exec-%d-%d" % (t, i)))


threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
fork_thread = threading.Thread(target=forker)
fork_thread.start()
for t in threads:
    t.start()
for _ in range(n_rif):
    held.append(spawner.fork_child())
for t in threads:
    t.join()
done.set()
fork_thread.join()
say(who="ready", threads=threading.active_count())
time.sleep(300)
'''

EOF_BUDGET_S = 0.05


@dataclass
class Round:
    latencies: dict[int, float] = field(default_factory=dict)  # pid -> seconds to reap
    problems: list[str] = field(default_factory=list)
    children: int = 0
    siblings: int = 0


@pytest.fixture
def sibling_pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def run_round(
    pen: Pen, kind: str, n_threads: int, per_thread: int, n_keep: int, n_rif: int
) -> Round:
    """One parent under attack; returns what the checker found."""
    rnd = Round()
    sib_r, sib_w = os.pipe2(os.O_CLOEXEC)
    r, w = report_pipe()
    try:
        parent = pen.spawn(
            [PY, "-S", "-c", PARENT, kind, str(n_threads), str(per_thread), str(n_keep),
             str(n_rif), str(sib_r), CHILD],
            env=python_env(), stdin=None, stdout=w, stderr=None, pass_fds=[sib_r],
        )
    finally:
        os.close(w)
        os.close(sib_r)
    lines = Lines(r)
    try:
        n_exec = n_threads * per_thread
        reports: list[dict[str, Any]] = []

        def complete(_: str) -> bool:
            reports[:] = [json.loads(line) for line in lines.lines if line]
            who = [x["who"] for x in reports]
            kept = sum(1 for x in reports if x["who"] == "sibling" and x["keep"])
            return ("ready" in who and who.count("child") == n_exec
                    and who.count("rif") == n_rif and kept == n_keep)

        if lines.wait_for(complete, 120) is None:
            rnd.problems.append(f"the parent or its children never reported: {lines.lines[-5:]}")
        complete("")
        t0 = time.monotonic()
        parent.pidfd.send_signal(signal.SIGKILL)
        parent.pidfd.wait()
        parent.pidfd.close()

        writers = {x["pid"]: (x["dev"], x["ino"]) for x in reports if x["who"] == "writer"}
        guards = {x["guard"] for x in reports if x["who"] == "guard"}
        children = [x for x in reports if x["who"] == "child"]
        rifs = [x for x in reports if x["who"] == "rif"]
        siblings = [x for x in reports if x["who"] == "sibling"]
        kept = {x["pid"] for x in siblings if x["keep"]}
        # Our children once the parent is gone: those it holds a writer for, and the guards.
        aware = {x["pid"] for x in children if x["pid"] in writers}
        aware |= {x["pid"] for x in rifs} | guards
        rnd.children, rnd.siblings = len(aware), len(siblings)

        seen = reap_until(t0 + 1.0 - time.monotonic(), stop=lambda s: aware <= s.pids)
        for pid in sorted(aware):
            if pid in seen.at:
                rnd.latencies[pid] = seen.at[pid] - t0
                if seen.at[pid] - t0 > EOF_BUDGET_S:
                    rnd.problems.append(f"lifeline-aware child {pid} died "
                                        f"{(seen.at[pid] - t0) * 1e3:.1f} ms after the kill")
            else:
                rnd.problems.append(f"lifeline-aware child {pid} still alive 1 s after the kill "
                                    "(its lifeline never said EOF)")
        early = kept & set(seen.at)
        if early:
            rnd.problems.append(f"forked siblings died with the parent: {sorted(early)}")
        rnd.problems += _judge_fd_tables(writers, children, rifs, siblings)

        # Only now cut the parent's own lifeline: its attach() (our safety net) kills its
        # process group on EOF, and the siblings and a broken spawner's children are in it.
        parent.lifeline.close()
        os.close(sib_w)  # now the kept siblings go
        sib_w = -1
        done = reap_until(2.0, into=seen)
        if not done.empty:
            rnd.problems.append("descendants left 2 s after the siblings were released")
            pen.clean()
    finally:
        lines.close()
        if sib_w >= 0:
            os.close(sib_w)
    return rnd


def _judge_fd_tables(
    writers: dict[int, tuple[int, int]],
    children: list[dict[str, Any]],
    rifs: list[dict[str, Any]],
    siblings: list[dict[str, Any]],
) -> list[str]:
    out = []
    w_inodes = set(writers.values())
    for c in children:
        fds = {fd for fd, *_ in c["fds"]}
        want = {0, 1, 2, c["lifeline"]}
        if fds != want:
            out.append(f"{c['tag']} (pid {c['pid']}) has fds {sorted(fds)}, "
                       f"asked for {sorted(want)}")
        own = writers.get(c["pid"])
        table = {fd: (dev, ino) for fd, dev, ino, _ in c["fds"]}
        if own is not None and table.get(c["lifeline"]) != own:
            out.append(f"{c['tag']} (pid {c['pid']}): fd {c['lifeline']} is not its own lifeline")
    for who, procs in (("run_in_fork child", rifs), ("forked sibling", siblings)):
        for p in procs:
            held = [fd for fd, dev, ino, acc in p["fds"]
                    if (dev, ino) in w_inodes and acc == os.O_WRONLY]
            if held:
                out.append(f"{who} {p['pid']} holds lifeline write ends at fds {held}")
    for p in rifs:
        table = {fd: (dev, ino) for fd, dev, ino, _ in p["fds"]}
        if writers.get(p["pid"]) is not None and table.get(p["lifeline"]) != writers[p["pid"]]:
            out.append(f"run_in_fork child {p['pid']}: fd {p['lifeline']} is not its own "
                       "lifeline")
    return out


def check_lifeline_leaks(pen: Pen, kind: str, rounds: int, **shape: int) -> list[Round]:
    return [run_round(pen, kind, **shape) for _ in range(rounds)]


SHAPE = {"n_threads": 3, "per_thread": size(2, 3), "n_keep": 3, "n_rif": size(2, 3)}


def test_every_lifeline_says_eof_at_once_and_fd_tables_are_exact(pen: Pen) -> None:
    rounds = check_lifeline_leaks(pen, "tether", size(2, 25), **SHAPE)
    lat = [x for rnd in rounds for x in rnd.latencies.values()]
    children = sum(r.children for r in rounds)
    siblings = sum(r.siblings for r in rounds)
    record("lifeline-leak",
           f"{len(rounds)} rounds, {children} lifeline-aware children, {siblings} forked "
           f"siblings checked; death after the parent's kill: {ms_summary(lat)} "
           f"(budget {EOF_BUDGET_S * 1e3:.0f} ms)",
           rounds=len(rounds), children=children, siblings=siblings,
           p50_ms=percentile(lat, 50) * 1e3, p99_ms=percentile(lat, 99) * 1e3,
           max_ms=max(lat) * 1e3 if lat else None)
    problems = [p for rnd in rounds for p in rnd.problems]
    assert not problems, "\n".join(problems[:40])
    assert children == len(rounds) * (SHAPE["n_threads"] * SHAPE["per_thread"] + SHAPE["n_rif"])


def test_checker_catches_a_leaking_lifeline_spawner(pen: Pen) -> None:
    (rnd,) = check_lifeline_leaks(pen, "broken", 1, **SHAPE)
    text = "\n".join(rnd.problems)
    assert "its lifeline never said EOF" in text, text
    assert "asked for" in text, text  # exec'd children inherited other children's writers
    assert "holds lifeline write ends" in text, text  # forked siblings kept them too
    pen.clean()
