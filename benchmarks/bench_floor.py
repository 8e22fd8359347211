"""The floor under a guarded spawn: two execs in a row against one (issue 13).

A measurement, not a test: it prints medians and asserts nothing.

``exec_floor.c`` (compiled here against the guard's own libc-free runtime where the machine
has one, so its "guard" execs as cheaply as a static binary can) times, interleaved round by
round: vfork+exec of /bin/true (Popen's floor); of a static no-op and of the real guard (the
price of the guard's exec alone); two execs in a row, a tiny guard that clones and execs
/bin/true (the floor of any guarded spawn); and the same overlapped, the program cloned by
the guard's pre-exec child so that its exec may run beside the guard's; and a guard launched
ahead (not timed: it sleeps on its control socket and lifeline), to which the timed part hands
a fixed-size request with the program's stdio and cwd as fds, and which vfork+execs /bin/true,
reaps it, reports and exits: the floor of a spawn with the guard's own clone and exec off its
path (ARCHITECTURE.md, "A guard launched ahead"); the same in the steady state, each sample
launching the next sample's guard while its program runs; what such a launch costs, and what
one that no spawn takes costs. Beside them, from Python,
``tether.spawn(contain="group").wait()`` against ``subprocess.Popen().wait()``: how far above
that floor a guarded spawn is.

And the floor of a limited start (issue 15, ``exec_floor_limits.c``): the overlapped start
with the guard's clone in a new PID namespace, alone and with the tree in its own v1 memory,
cpu, cpuacct and pids groups (joined by the clone child, the usage read by the guard, the
memory group removed after), with and without the cpu group: what the kernel alone charges
for the limits. It needs root and those four v1 hierarchies (a hybrid layout): this script
makes a private directory in this process's own group of each, ``tether-floor-<pid>``, and
removes it with everything in it at the end; elsewhere those rows are skipped, saying why.

And the floor of the exit notice (issue 13's <= 1.6x, ``exec_floor_notice.c``, ``exec_floor
notice N``: a rotation of its own): from a program's exit to the parent knowing of it, timed
as section 3 (``_exitlat.py``) times it. The parent releases the program, a static reader
blocked reading a pipe (the close of the write end), and goes straight into its wait; the
reader sleeps 2-20 ms (uniform, a fixed seed), reads CLOCK_MONOTONIC, stores it in a page it
shares with the parent (a memfd mapped before its read: nothing wakes the parent) and exits
at once; each figure is the parent's clock when it knows the program has exited less that
stamp, so the parent has been asleep for milliseconds, its vCPU halted, as in a real wait
(the clock once started at the close, when the parent's vCPU had only just gone idle, which
made the direct wait far cheaper than a real one). The program is either our own child,
waited for with ``waitid`` on its pidfd (``Popen.wait()``'s one wakeup), or the child of a
minimal guard (a "relay", launched untimed) that sleeps on its pidfd, reaps it, sends a
20-byte report on a SEQPACKET socket and exits (two wakeups in a row), the parent sleeping
on the socket, or (tether's early wake) on the program's pidfd too, then spinning for the
report and the relay's exit; each to the relay's reap (where ``Child.wait()`` returns) and
to the report's read. Beside them, from Python, ``Child.wait()``'s exit notice against
``Popen.wait()``'s, measured as section 3 (``_exitlat.py``) measures them: what the 1.6x is
set against.

    PYTHONPATH=src python benchmarks/bench_floor.py [--quick]
    PYTHONPATH=src python benchmarks/run.py --sections others --others floor
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import platform
import random
import shutil
import statistics
import subprocess  # noqa: TET102  the baseline, and the C compiler
import tempfile
import time
from collections.abc import Iterator

import _exitlat
import tether
from _common import build_c
from tether._kernel.controllers import controller_places, own_v1_cgroups
from tether._tree.modes import guard_path

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(HERE, os.pardir, "src", "tether", "_kernel")
# As setup.py builds the libc-free guard (FREESTANDING_FLAGS there).
FREESTANDING = ["-ffreestanding", "-fno-builtin", "-fno-stack-protector",
                "-fno-tree-loop-distribute-patterns", "-fno-pie", "-no-pie", "-static",
                "-nostdlib", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
                "-Wl,--build-id=none"]
ROWS = {
    "true": "vfork+exec /bin/true (Popen's floor)",
    "noop": "vfork+exec a static no-op (a guard exec's floor)",
    "guard": "vfork+exec the guard, to its usage exit",
    "two_exec": "tiny guard, then /bin/true (a guarded spawn's floor)",
    "overlapped": "the same, program cloned before the guard's exec",
    "ahead": "guard launched ahead: hand-over to report, reaped",
    "ahead_report": "the same, until its report is read",
    "ahead_launch": "launching a guard ahead, until ready (untimed above)",
    "ahead_unused": "a guard launched ahead, never used, reaped",
    "ahead_chain": "the same, next guard launched meanwhile (steady)",
    "overlapped_ns": "overlapped, the guard's clone in a new PID namespace",
    "limited_ns": "the same, the tree in its limited v1 groups",
    "limited_ns_nocpu": "the same, but not in the cpu group",
    "notice_direct": "exit notice: our own child, waitid (Popen's floor)",
    "notice_guarded": "exit notice via a relay: report read, relay reaped",
    "notice_guarded_report": "exit notice via a relay, until its report is read",
    "notice_early": "exit notice via a relay, early wake: relay reaped",
    "notice_early_report": "exit notice via a relay, early wake: report read",
}
#: The limited variants' hierarchies, in exec_floor's --limits order.
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


def build(tmpdir: str) -> tuple[str, str] | None:
    """Compile exec_floor.c: (path, kind), or None without a C compiler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = os.path.join(tmpdir, "exec_floor")
    srcs = [os.path.join(HERE, name)
            for name in ("exec_floor.c", "exec_floor_limits.c", "exec_floor_notice.c")]
    attempts = []
    if platform.machine() in ("x86_64", "aarch64"):
        extra = ["-mno-outline-atomics"] if platform.machine() == "aarch64" else []
        attempts.append(("libc-free", [cc, "-O2", "-I", KERNEL, *srcs,
                                       os.path.join(KERNEL, "nolibc", "rt.c"), *FREESTANDING,
                                       *extra, "-lgcc", "-o", exe]))
    attempts.append(("static libc", [cc, "-O2", "-static", *srcs, "-o", exe]))
    for kind, cmd in attempts:
        if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:  # noqa: TET102
            return exe, kind
    return None


def own_v1_groups() -> tuple[list[str], str]:
    """This process's own group on each of CONTROLLERS' v1 hierarchies (its directory, in
    CONTROLLERS' order), where tether finds them (``controller_places``,
    ``own_v1_cgroups``): (dirs, "") or ([], why not)."""
    places, own = controller_places(), own_v1_cgroups()
    missing = [name for name in CONTROLLERS if places.get(name, "v2") not in own]
    if missing:
        return [], f"no v1 {'/'.join(missing)} hierarchy"
    if len({places[name] for name in CONTROLLERS}) < len(CONTROLLERS):
        return [], "memory, cpu, cpuacct and pids do not each have a v1 hierarchy of their own"
    return [own[places[name]] for name in CONTROLLERS], ""


def remove_group(path: str) -> None:
    """rmdir a cgroup directory, the groups under it first (a group whose last process is
    still exiting is busy for a moment: retried for up to a second)."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_group(entry.path)
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        time.sleep(0.01)
    os.rmdir(path)


@contextlib.contextmanager
def limit_dirs() -> Iterator[tuple[list[str], str]]:
    """Private directories for the limited variants, ``tether-floor-<pid>`` in this process's
    own group of each hierarchy (as tether's ``tether``), removed with everything in them on
    the way out, error or not: (dirs, "") or ([], why not)."""
    places, why = own_v1_groups()
    made: list[str] = []
    try:
        for place in places:
            path = os.path.join(place, f"tether-floor-{os.getpid()}")
            os.mkdir(path)
            made.append(path)
    except OSError as e:
        why = f"cannot make a cgroup directory: {e}"
    try:
        yield (made, "") if not why else ([], why)
    finally:
        for path in made:
            remove_group(path)


def said(stderr: str) -> str:
    """exec_floor's own lines on stderr (the real guard's usage errors are there too)."""
    return " ".join(line for line in stderr.splitlines() if line.startswith("exec_floor:"))


def run_floor(exe: str, *args: str) -> tuple[dict[str, float], str]:
    """Run ``exe *args`` (exec_floor prints a variant and its median in nanoseconds per line):
    medians in microseconds, by variant, and what it said on stderr."""
    done = subprocess.run(  # noqa: TET102  the floor program, exits by itself
        [exe, *args], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    floors = {line.split()[0]: int(line.split()[1]) / 1000 for line in done.stdout.splitlines()}
    return floors, said(done.stderr)


def c_floors(exe: str, rounds: int, limits: list[str]) -> tuple[dict[str, float], str]:
    """Medians in microseconds, by variant, and what it said on stderr (why the limited
    variants were skipped, if they were)."""
    return run_floor(exe, "bench", str(rounds), guard_path(),
                     *(["--limits", *limits] if limits else []))


def notice_floors(exe: str, rounds: int) -> tuple[dict[str, float], str]:
    """exec_floor's exit notice variants (``exec_floor notice N``, a rotation of its own):
    medians in microseconds, and its line on stderr (how often the early wake was taken)."""
    floors, told = run_floor(exe, "notice", str(rounds))
    return floors, told.removeprefix("exec_floor: notice_early: ")


def notice_pair(rounds: int) -> dict[str, float]:
    """tether's ``Child.wait()`` exit notice (group mode) against ``Popen.wait()``'s, as
    section 3 measures them (``_exitlat.py``'s static C child, its start and its clock: from
    the child's clock read before its ``_exit``, 2-20 ms after its start, to the wait's return),
    one of each per round, in alternating order: medians (us)."""
    samples: dict[str, list[float]] = {"popen_wait": [], "child_wait": []}
    rng = random.Random(7)
    argv = list(_exitlat.CHILD_ARGV)
    with tempfile.TemporaryDirectory(prefix="tether-floor-") as tmp:
        exe = build_c(tmp, "exitstamp", _exitlat.C_CHILD)
        if exe is not None:
            _exitlat.CHILD_ARGV[:] = [exe]
        try:
            for i in range(rounds + 5):
                for name in list(samples)[:: 1 if i % 2 else -1]:
                    kid = _exitlat._make(name)
                    _exitlat._ready(kid)
                    latency = _exitlat._measure(kid, rng.uniform(0.002, 0.020))
                    if i >= 5:  # warm-up
                        samples[name].append(latency * 1e6)
        finally:
            _exitlat.CHILD_ARGV[:] = argv
    return {name: statistics.median(values) for name, values in samples.items()}


def python_pair(rounds: int) -> dict[str, float]:
    """tether.spawn(group).wait() and Popen().wait() of /bin/true, interleaved: medians (us)."""
    samples: dict[str, list[float]] = {"popen": [], "spawn_group": []}

    def popen() -> None:
        subprocess.Popen(["/bin/true"]).wait()  # noqa: TET102  baseline

    def spawn() -> None:
        with tether.spawn(["/bin/true"], contain="group") as child:
            child.wait()

    for i in range(rounds + 20):
        for name, fn in (("popen", popen), ("spawn_group", spawn))[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            fn()
            if i >= 20:
                samples[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(quick: bool = False) -> dict[str, object]:
    rounds = 300 if quick else 3000
    with tempfile.TemporaryDirectory(prefix="tether-floor-") as tmp:
        built = build(tmp)
        if built is None:
            return {"skipped": "no C compiler"}
        exe, kind = built
        with limit_dirs() as (limits, why):
            try:
                floors, told = c_floors(exe, rounds, limits)
            except subprocess.CalledProcessError as e:
                if not limits:
                    raise
                # A limited sample failed (exec_floor_limits.c says which): the rest without.
                why = f"exec_floor failed with them: {said(e.stderr)}"
                floors, told = c_floors(exe, rounds, [])
        notice, early = notice_floors(exe, rounds)
    pair = python_pair(rounds // 3)
    exits = notice_pair(rounds // 10)
    result: dict[str, object] = {"build": kind, "rounds": rounds}
    result.update({f"{ROWS[k]} (us)": round(v, 1) for k, v in floors.items()})
    result.update({f"{ROWS[k]} (us)": round(notice[k], 1) for k in ROWS if k in notice})
    result["two-exec floor / one exec"] = round(floors["two_exec"] / floors["true"], 2)
    result["overlap gain (us)"] = round(floors["two_exec"] - floors["overlapped"], 1)
    gain = floors["two_exec"] - floors["ahead_chain"]
    result["launched-ahead floor / one exec"] = round(floors["ahead"] / floors["true"], 2)
    result["launched-ahead floor to the report / one exec"] = round(
        floors["ahead_report"] / floors["true"], 2)
    result["launched-ahead steady state / one exec"] = round(
        floors["ahead_chain"] / floors["true"], 2)
    result["steady-state gain over two execs (us)"] = round(gain, 1)
    if "limited_ns" in floors:
        base = floors["overlapped_ns"]
        result["limited_ns / overlapped_ns (C floor of limits)"] = round(
            floors["limited_ns"] / base, 2)
        result["limited_ns_nocpu / overlapped_ns (the same, no cpu group)"] = round(
            floors["limited_ns_nocpu"] / base, 2)
        result["limited_ns - overlapped_ns (us)"] = round(floors["limited_ns"] - base, 1)
        result["limited_ns - limited_ns_nocpu (us, the cpu group)"] = round(
            floors["limited_ns"] - floors["limited_ns_nocpu"], 1)
    else:
        result["limited variants"] = (f"skipped: {why}" if why else told
                                      or "skipped: exec_floor did not run them")
    direct = notice["notice_direct"]
    for name, what in (("guarded", "relay"), ("early", "early wake")):
        result[f"exit notice floor: {what} / direct"] = round(notice[f"notice_{name}"] / direct, 2)
        result[f"exit notice floor: {what} / direct, to the report"] = round(
            notice[f"notice_{name}_report"] / direct, 2)
    result["exit notice floor: early wake taken"] = early or "(exec_floor said nothing)"
    result["Popen.wait() exit notice (us)"] = round(exits["popen_wait"], 1)
    result["Child.wait() exit notice (us)"] = round(exits["child_wait"], 1)
    result["Child.wait() / Popen.wait() exit notice (<= 1.6x)"] = round(
        exits["child_wait"] / exits["popen_wait"], 2)
    result["Popen().wait() (us)"] = round(pair["popen"], 1)
    result["tether.spawn(group).wait() (us)"] = round(pair["spawn_group"], 1)
    result["tether.spawn / Popen"] = round(pair["spawn_group"] / pair["popen"], 2)
    # What a guard launched ahead of each tree would leave if its gain in C carried over one
    # for one (an upper bound: see ARCHITECTURE.md for what a real hand-over adds).
    result["tether.spawn less that gain / Popen (estimate)"] = round(
        (pair["spawn_group"] - gain) / pair["popen"], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes")
    for key, value in main(parser.parse_args().quick).items():
        print(f"{key:<58} {value}")
