"""Trees under attack (issue 11, items 1, 4, 5, 6, 7, 24 and 25), repeated with random choices:

* item 1: another user (uid 65534), woken by inotify, races to open and lock every fresh
  ``t-*`` directory
  while we start cgroup trees: no start fails, it locks nothing, no directory is left;
* item 4: N workers share one lifeline and all call ``attach()``; the lifeline is cut: all die;
* item 5: a grandchild finds something else at the fd that ``TETHER_LIFELINE_FD`` names (a
  socket, another pipe, /dev/null): ``attach()`` never arms it;
* item 6: a member that wrote itself into another cgroup still dies with the parent;
* item 7: a parent with fds 0-2 closed uses a random way of starting a child;
* item 24 (the SIGCONT half): a stopped tree ends on ``terminate()``;
* item 25: the guard of ``tether run`` SIGKILLed after the start: 125 and a message.

Item 23 (nesting) is tests/proof/test_nesting.py. The oracle is tests/oracle.py."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

import oracle
import tether
from conftest import require_mode
from test_lifeline import WORKERS, Lines
from test_stdio_closed import run_parent_with_stdio_closed
from test_stopped_tree import STOP_A_CHILD
from tether._kernel import cgroup as _cgroup

from ._harness import PY, Pen, guarded_modes, python_env, record, size

SEED = random.randrange(1 << 32)


# -- item 1 ---------------------------------------------------------------------------------------


IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK


def _lock_whatever_appears(parent: str, stop: int, report: int, ours: tuple[int, ...]) -> None:
    """As uid 65534: woken by inotify the moment an entry is made in ``parent``, open and
    flock it (keeping each lock), until ``stop`` is at EOF; report "seen locked" counts."""
    for fd in ours:  # the test's ends: with them open here, ``stop`` would never end
        os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    watch = libc.inotify_init1(IN_NONBLOCK)
    assert watch >= 0 and libc.inotify_add_watch(watch, parent.encode(), IN_CREATE) >= 0
    poller = select.poll()
    poller.register(watch, select.POLLIN)
    poller.register(stop, select.POLLIN)
    seen = locked = 0
    held: list[int] = []
    while True:
        ready = dict(poller.poll())
        if watch not in ready:
            break  # stop: EOF
        buf = os.read(watch, 1 << 16)
        while buf:
            _, _, _, length = struct.unpack_from("iIII", buf)
            name = buf[16:16 + length].rstrip(b"\0").decode()
            buf = buf[16 + length:]
            seen += 1
            try:
                fd = os.open(os.path.join(parent, name), os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(fd)
                locked += 1
            except OSError:
                pass
    os.write(report, f"{seen} {locked}".encode())


def test_another_user_racing_for_fresh_tree_directories_blocks_and_keeps_nothing(
        pen: Pen, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    monkeypatch.setenv(_cgroup.ROOT_ENV, pen.path)
    tether.run(["true"], contain="cgroup")  # makes <pen>/tether, where the attacker looks
    stop_r, stop_w = os.pipe()
    report_r, report_w = os.pipe()
    attacker = tether.run_in_fork(_lock_whatever_appears, pen.trees, stop_r, report_w,
                                  (stop_w, report_r))
    os.close(stop_r)
    os.close(report_w)
    spawns = size(100, 500)
    failures: list[str] = []
    try:
        for _ in range(0, spawns, 5):  # five trees alive at a time: time to be attacked
            children = []
            for _ in range(5):
                try:
                    children.append(tether.spawn(["sleep", "300"], contain="cgroup"))
                except OSError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
            for child in children:
                child.kill()
                child.wait(timeout=60)
    finally:
        os.close(stop_w)
        with os.fdopen(report_r, "rb") as f:
            seen, locked = map(int, f.read().split() or [b"-1", b"-1"])
        assert attacker.pidfd.wait().code == 0
        attacker.lifeline.close()
        attacker.pidfd.close()
    left = pen.tree_dirs()
    assert (failures, locked, left) == ([], 0, set()), f"{len(failures)} failed: {failures[:3]}"
    record("lock takeover (item 1)",
           f"{spawns} cgroup spawns under attack, {seen} directories seen by uid 65534, "
           f"0 locked, 0 failures, 0 left", spawns=spawns, seen=seen)


# -- items 4 and 5 --------------------------------------------------------------------------------


def test_every_worker_attached_to_a_shared_lifeline_dies_when_it_is_cut() -> None:
    rounds = size(8, 100)
    workers = WORKERS.replace("for n in (1, 2):", "for n in range(1, int(sys.argv[2]) + 1):")
    rng = random.Random(SEED)
    killed = 0
    for i in range(rounds):
        n = rng.randint(2, 5)
        r, w = os.pipe()
        lines = Lines(r)
        release_r, release_w = os.pipe()
        try:
            launcher = tether.spawn_lifelined([PY, "-c", workers, str(release_r), str(n)],
                                              stdout=w, env=python_env(), pass_fds=[release_r])
            os.close(w)
            os.close(release_r)
            assert launcher.pidfd.wait().code == 0
            seen = lines.until(*(f"worker{k}" for k in range(1, n + 1)))
            pids = set(seen.values())
            launcher.lifeline.close()
            launcher.pidfd.close()
            result = oracle.reap_until(30.0, stop=lambda s, p=pids: p <= s.pids)  # type: ignore[misc]
            assert pids <= result.pids, f"seed {SEED} round {i}: a worker of {n} survived"
            assert {result.status[p] for p in pids} == {(os.CLD_KILLED, signal.SIGKILL)}
            killed += n
        finally:
            os.close(release_w)
            lines.f.close()
    record("shared lifeline (item 4)", f"{rounds} rounds, {killed} attached workers, all killed",
           rounds=rounds, workers=killed, seed=SEED)


IMPOSTOR = r"""
import os, socket, sys, tether
kind = sys.argv[1]
if kind == "socket":
    a, b = socket.socketpair()
    fd = a.fileno()
elif kind == "pipe":
    fd, other = os.pipe()
else:
    fd = os.open(os.devnull, os.O_RDONLY)
assert fd == 3, fd
try:
    armed = repr(tether.attach())
except ValueError:
    armed = "refused"
if kind == "socket":
    b.send(b"traffic")  # with fd 3 armed by mistake: SIGKILL for us
    a.recv(100)
elif kind == "pipe":
    os.write(other, b"traffic")
    os.read(fd, 100)
print(armed)
"""


def test_attach_never_arms_an_fd_that_is_not_its_lifeline() -> None:
    rng = random.Random(SEED)
    rounds = size(20, 200)
    for i in range(rounds):
        # A bare number is the first release's form: only a pipe's read end is accepted
        # there, so it is tried with what is no pipe.
        announced = rng.choice(["identity", "bare"])
        kind = rng.choice(["socket", "devnull"] if announced == "bare"
                          else ["socket", "pipe", "devnull"])
        assign = "TETHER_LIFELINE_FD=3 " if announced == "bare" else ""
        done = tether.run(["sh", "-c", f'exec 3<&-; {assign}exec "$0" -c "$1" "$2"', PY,
                           IMPOSTOR, kind], env=python_env(), capture_output=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, b"refused\n"), (
            f"seed {SEED} round {i} {announced} {kind}: {done}")
    record("impostor lifeline fd (item 5)", f"{rounds} impostors, none armed", rounds=rounds,
           seed=SEED)


# -- item 6 ---------------------------------------------------------------------------------------

ESCAPER = r"""
import sys, time, tether
script = 'sleep 300 & echo $! > "$0"/cgroup.procs && echo moved; wait'
child = tether.spawn(["sh", "-c", script, sys.argv[1]], contain="cgroup")
time.sleep(300)
"""


def test_a_member_that_left_the_cgroup_dies_with_the_parent(pen: Pen) -> None:
    require_mode("cgroup")
    rounds = size(5, 50)
    for i in range(rounds):
        elsewhere = os.path.join(pen.path, f"escape-{i}")
        os.mkdir(elsewhere)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            parent = pen.spawn([PY, "-c", ESCAPER, elsewhere],
                               env=python_env(**pen.env()), stdout=w)
        finally:
            os.close(w)
        with os.fdopen(r, "rb") as out, parent.pidfd, parent.lifeline:
            assert out.readline() == b"moved\n"
            parent.pidfd.send_signal(signal.SIGKILL)
            parent.pidfd.wait()
            assert oracle.reap_until(30.0).empty, f"round {i}: the escaped member survived"
            assert not _cgroup.populated(elsewhere)
        os.rmdir(elsewhere)
    record("cgroup escape (item 6)", f"{rounds} escaped members, all died with the parent",
           rounds=rounds)


# -- item 7 ---------------------------------------------------------------------------------------


def test_a_parent_with_stdio_closed_can_start_children_every_way() -> None:
    rng = random.Random(SEED)
    ways = [*guarded_modes(), "None", "spawn_lifelined", "run_in_fork"]
    rounds = size(12, 100)
    for i in range(rounds):
        how = rng.choice(ways)
        report = run_parent_with_stdio_closed(how, python_env())
        assert report.get("error") is None and report["returncode"] == 0, (
            f"seed {SEED} round {i} {how}: {report}")
        assert report["program"] == "closed closed closed"
        assert report["parent_closed_while_alive"] and report["parent_closed_after"]
    record("stdio closed (item 7)", f"{rounds} parents with 0-2 closed, all worked",
           rounds=rounds, seed=SEED)


# -- items 24 and 25 ------------------------------------------------------------------------------


def test_terminate_ends_a_tree_with_a_stopped_member() -> None:
    rng = random.Random(SEED)
    modes = guarded_modes()
    rounds = size(12, 100)
    for i in range(rounds):
        mode = rng.choice(modes)
        with tether.spawn([sys.executable, "-c", STOP_A_CHILD], contain=mode,
                          wait_tree=True, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None and child.stdout.readline() == "stopped\n"
            child.terminate()
            assert child.wait(timeout=60) == 0, f"seed {SEED} round {i} {mode}"
    record("stopped tree (item 24, SIGCONT)", f"{rounds} stopped trees ended by terminate()",
           rounds=rounds, seed=SEED)


def test_tether_run_whose_guard_is_killed_at_a_random_moment_exits_125() -> None:
    rng = random.Random(SEED)
    rounds = size(10, 100)
    for i in range(rounds):
        # The program has no child: a guard killed before its start report leaves those
        # running (item 2, its own case), which is not this attack.
        with tether.spawn([PY, "-m", "tether", "run", "--contain", "group", "--", "sh", "-c",
                           "echo $PPID; exec sleep 300"], contain="group", env=python_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None and child.stderr is not None
            guard_pid = int(child.stdout.readline())
            time.sleep(rng.uniform(0, 0.05))  # a random moment after the start
            # The guard is alive: it holds its unreaped child, so the number is still its own.
            with contextlib.suppress(ProcessLookupError):
                os.kill(guard_pid, signal.SIGKILL)
            code = child.wait(timeout=60)
            _, err = child.communicate(timeout=60)  # until the tree is over, not EOF
        assert code == 125 and err.startswith("tether: ") and "Traceback" not in err, (
            f"seed {SEED} round {i}: {code} {err!r}")
    record("guard killed under tether run (item 25)", f"{rounds} kills, all 125 with a message",
           rounds=rounds, seed=SEED)
