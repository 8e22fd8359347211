"""Limits and Usage for a whole tree: OOM inside the tree only (and Exit knows it), a fork
bomb ends at pids, CPU is throttled to cpus, accounting includes daemonised grandchildren,
and bad or unsupported limits fail before anything exists. Per controller: v2 where the v2
hierarchy has it, v1 otherwise. Each test's v1 trees go below a private directory of this
module (TETHER_CGROUP_V1_SUBDIR); the v2 ones below the run's own root (conftest)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracle
import tether
from tether._kernel import controllers, v1_pool
from v1_parent import private_v1_parent
from v1_parent import tree_dirs as _tree_dirs

PY = sys.executable


@pytest.fixture(autouse=True)
def places(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A private v1 parent per test (so a second copy of the suite never shares it), and a
    check that the test left no per-tree v1 directory."""
    with private_v1_parent(monkeypatch, ("memory", "pids", "cpu"), on_v1=False) as found:
        yield found
        v1_pool.drain()  # this test's reusable directories (its parent is its own)
        assert _tree_dirs(found) == set(), "a per-tree v1 cgroup was left"


@pytest.fixture(params=["cgroup", "pidns"])
def limit_mode(request: pytest.FixtureRequest) -> str:
    from conftest import require_mode

    require_mode(request.param)
    return str(request.param)


ALLOCATE = "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"


def test_memory_limit_oom_kills_the_tree_and_exit_says_so(limit_mode: str) -> None:
    result = tether.run([PY, "-c", ALLOCATE], contain=limit_mode,
                        limits=tether.Limits(memory=64 << 20))
    assert result.returncode == -signal.SIGKILL
    assert result.exit.oom_killed
    assert str(result.exit) == "killed by the OOM killer (memory limit 64 MiB)"
    assert result.usage.oom_kills >= 1


def test_same_program_without_the_limit_exits_0(limit_mode: str) -> None:
    result = tether.run([PY, "-c", ALLOCATE], contain=limit_mode, limits=tether.Limits())
    assert result.returncode == 0
    assert not result.exit.oom_killed
    assert result.usage.memory_peak >= 200 << 20


def test_a_kill_by_us_is_not_an_oom_kill(limit_mode: str) -> None:
    with tether.spawn(["sleep", "30"], contain=limit_mode,
                      limits=tether.Limits(memory=64 << 20)) as child:
        child.pidfd.send_signal(signal.SIGKILL)
        child.wait()
        assert child.exit == tether.Exit(code=None, signal=signal.SIGKILL)
        assert not child.exit.oom_killed
        assert str(child.exit) == "killed by SIGKILL"


FORK_UNTIL_REFUSED = """
import errno, os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print(n, errno.errorcode[e.errno])
        break
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    n += 1
"""


def test_a_fork_bomb_ends_at_the_pids_limit() -> None:
    # Every child stays (sleeps), so the tree fills to its limit whatever the machine's load;
    # the fork past it is refused (EAGAIN), and the tree ends with the program.
    result = tether.run([PY, "-c", FORK_UNTIL_REFUSED], contain="cgroup",
                        limits=tether.Limits(pids=50), capture_output=True, timeout=120)
    forked, refusal = result.stdout.split()
    assert refusal == b"EAGAIN"
    assert int(forked) == 49  # pids=50: the program and its 49 children (the guard is the +1)
    assert result.usage.pids_peak == 51
    assert oracle.no_descendants()


BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2: pass\n"


def test_cpu_quota_throttles_the_tree(limit_mode: str) -> None:
    result = tether.run([PY, "-c", BUSY], contain=limit_mode, limits=tether.Limits(cpus=0.5))
    # 2 s of wall time at half a CPU: the kernel's quota is the bound (plus startup).
    assert 0.05 < result.usage.cpu < 2 * 0.5 * 1.25 + 0.1


SHORT_BUSY = ("import time\nwhile time.process_time() < 0.03: pass\n"
              "print(time.process_time())\n")


def test_usage_of_a_short_tree_is_its_cpu_time_not_timer_ticks(limit_mode: str) -> None:
    # v1 cpuacct's user/system split (usage_all, usage_user/_sys) is sampled at timer ticks
    # (4 ms here): a tree of a millisecond read 0 three times in four, a longer one as a
    # multiple of 4 ms. Its total (cpuacct.usage) is the scheduler's own count, which the
    # split is scaled to, as v2's cpu.stat is by the kernel.
    for _ in range(5):
        assert tether.run(["true"], contain=limit_mode, limits=tether.Limits()).usage.cpu > 0
    result = tether.run([PY, "-c", SHORT_BUSY], contain=limit_mode, limits=tether.Limits(),
                        capture_output=True)
    own = float(result.stdout)  # the program's own CPU so far (the scheduler's count)
    # The tree: the program, its interpreter's exit and its guard's CPU on top.
    assert own <= result.usage.cpu <= own + 0.05, (own, result.usage)


AFFINITY = "import os; print(sorted(os.sched_getaffinity(0)))"


@pytest.mark.parametrize("own_cpus", [None, 1], ids=["inherited", "one-cpu"])
def test_a_program_in_a_cpu_group_runs_with_the_affinity_it_inherited(
    limit_mode: str, own_cpus: int | None
) -> None:
    # A limited start changes nothing of the program's CPU affinity, whatever its launch does
    # about the scheduling of a program in a cpu group of its own: a mask cannot be put back
    # exactly once changed (the kernel keeps a set mask as the task's own request, and reads
    # back only the online CPUs of an inherited one), so the program's start never sets one.
    # Twelve starts per mask, wherever the kernel places the program.
    before = os.sched_getaffinity(0)
    mask = {min(before)} if own_cpus == 1 else before
    os.sched_setaffinity(0, mask)  # (this thread's, which the guard and program inherit)
    try:
        for _ in range(12):
            result = tether.run([PY, "-c", AFFINITY], contain=limit_mode, capture_output=True,
                                limits=tether.Limits(cpus=1.0), check=True)
            assert result.stdout.decode().strip() == str(sorted(mask))
    finally:
        os.sched_setaffinity(0, before)


# (AUDIT_ARCH, getcpu, sched_setaffinity) per machine, for a seccomp filter of this thread's
SECCOMP_ARCH = {"x86_64": (0xC000003E, 309, 203), "aarch64": (0xC00000B7, 168, 122)}


def _kill_on(arch: int, numbers: tuple[int, ...]) -> None:
    """A seccomp filter on this thread (and what it starts) that kills the process at any of
    these system calls: what a sandbox's deny list (systemd's SystemCallFilter=~...) does."""
    import ctypes
    import struct

    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    prog = struct.pack("HBBI", ld, 0, 0, 4) + struct.pack("HBBI", jeq, 0, len(numbers) + 1, arch)
    prog += struct.pack("HBBI", ld, 0, 0, 0)
    for i, nr in enumerate(numbers):
        prog += struct.pack("HBBI", jeq, len(numbers) - i, 0, nr)
    prog += struct.pack("HBBI", ret, 0, 0, 0x7FFF0000) + struct.pack("HBBI", ret, 0, 0, 0x80000000)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if (libc.prctl(38, 1, None, 0, 0) != 0  # PR_SET_NO_NEW_PRIVS (this thread's)
            or libc.prctl(22, 2, fprog, 0, 0) != 0):  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_a_program_in_a_cpu_group_starts_under_a_filter_that_kills_affinity_calls(
    limit_mode: str
) -> None:
    # A sandbox may kill a process at a system call it does not expect (a deny list's
    # default action). The start of a program in a cpu group of its own makes no CPU
    # placement call (getcpu, sched_setaffinity) in the program or in the caller's thread: a
    # version that moved the program off its parent's CPU did, and failed every such start
    # under this filter (EPROTO).
    import threading

    numbers = SECCOMP_ARCH.get(os.uname().machine)
    if numbers is None:
        pytest.skip(f"no seccomp numbers for {os.uname().machine} here")
    arch, calls = numbers[0], numbers[1:]
    results: list[object] = []

    def spawns() -> None:  # (a thread of its own: the filter stays with it, and ends with it)
        try:
            _kill_on(arch, calls)
            for _ in range(12):
                result = tether.run([PY, "-c", AFFINITY], contain=limit_mode,
                                    capture_output=True, limits=tether.Limits(cpus=1.0))
                results.append((result.returncode, result.stdout.decode().strip()))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=spawns)
    thread.start()
    thread.join()
    mask = str(sorted(os.sched_getaffinity(0)))
    assert results == [(0, mask)] * 12


DAEMON = """
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    sys.exit(0)
while time.process_time() < 0.5:
    pass
t = os.times()
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(repr(t.user + t.system))
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
"""


def test_usage_counts_a_daemonised_grandchild(limit_mode: str, tmp_path: Path) -> None:
    report = tmp_path / "cpu"
    result = tether.run([PY, "-c", DAEMON, str(report)], contain=limit_mode,
                        limits=tether.Limits(), wait_tree=True)
    assert result.returncode == 0
    daemon_cpu = float(report.read_text())
    assert daemon_cpu >= 0.45  # os.times() counts in clock ticks
    # The daemon's own CPU, and the program's Python start-up on top (generous: a loaded box).
    assert daemon_cpu * 0.95 <= result.usage.cpu <= daemon_cpu * 1.05 + 0.5


def test_usage_is_live_and_final(limit_mode: str) -> None:
    with tether.spawn(["sleep", "30"], contain=limit_mode, limits=tether.Limits()) as child:
        live = child.usage()
        assert live.pids_peak is not None and live.pids_peak >= 1
        child.kill()
        child.wait()
        final = child.usage()
        assert final == child.usage()  # read once, before the directories were removed


@pytest.mark.parametrize("make", [
    lambda: tether.Limits(pids=0),
    lambda: tether.Limits(memory=-1),
    lambda: tether.Limits(cpus=0),
    lambda: tether.Limits(cpu_weight=20000),
    lambda: tether.Limits(swap=1 << 20),
    lambda: tether.Limits.parse(memory="12Q"),
    lambda: tether.Limits.parse(cpus="lots"),
])
def test_bad_limits_raise_valueerror(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_limits_of_the_wrong_type_raise_typeerror_before_anything(no_leak: None) -> None:
    with pytest.raises(TypeError):
        tether.spawn(["true"], contain="cgroup", limits={"memory": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tether.Limits(memory="64M")  # type: ignore[arg-type]


@pytest.mark.parametrize("contain", ["group", None])
def test_limits_in_a_mode_without_a_cgroup_are_unsupported(
        contain: str | None, no_leak: None) -> None:
    with pytest.raises(tether.Unsupported, match="per-tree cgroup"):
        tether.spawn(["true"], contain=contain,  # type: ignore[arg-type]
                     limits=tether.Limits(memory=1 << 30))


def test_a_limit_without_its_controller_is_unsupported_and_leaves_nothing(
        places: dict[str, str], no_leak: None) -> None:
    if places["memory"] == "v2":
        pytest.skip("the memory controller is on cgroup v2 here: memory.high exists")
    with pytest.raises(tether.Unsupported, match="memory_high"):
        tether.spawn(["true"], contain="cgroup", limits=tether.Limits(memory_high=1 << 30))


def test_live_usage_without_limits_is_unsupported() -> None:
    with tether.spawn(["sleep", "30"]) as child:
        with pytest.raises(tether.Unsupported, match="limits="):
            child.usage()
        child.kill()


def test_v2_controllers_limit_the_tree(places: dict[str, str]) -> None:
    on_v2 = sorted(c for c, where in places.items() if where == "v2" and c != "cpuacct")
    if not on_v2:
        pytest.skip("no controller is on cgroup v2 here (hybrid layout: memory, cpu and pids "
                    "are bound to v1 hierarchies and cannot be on v2 at the same time); the "
                    "v1 path is what these tests exercise")
    result = tether.run([PY, "-c", ALLOCATE], contain="cgroup",
                        limits=tether.Limits(memory=64 << 20))
    assert result.exit.oom_killed


def test_cli_run_with_limits_reports_oom(python_env: dict[str, str]) -> None:
    result = tether.run([PY, "-m", "tether", "run", "--contain", "cgroup", "--memory", "64M",
                         "--stats", "--", PY, "-c", ALLOCATE], env=python_env,
                        capture_output=True, text=True)
    assert result.returncode == 137
    assert "killed by the OOM killer (memory limit 64 MiB)" in result.stderr
    assert "peak memory" in result.stderr


def test_aio_run_takes_limits_and_reports_usage(limit_mode: str) -> None:
    import asyncio

    result = asyncio.run(tether.aio.run([PY, "-c", ALLOCATE], contain=limit_mode,
                                        limits=tether.Limits(memory=64 << 20)))
    assert result.returncode == -signal.SIGKILL
    assert result.usage.oom_kills >= 1


def test_doctor_says_where_each_controller_is(places: dict[str, str]) -> None:
    from tether._tree.doctor import controller_rows

    rows = {row.name: row.detail for row in controller_rows()}
    expected = "cgroup v2" if places["memory"] == "v2" else f"cgroup v1 ({places['memory']})"
    assert rows["limits: memory"] == expected


def test_a_tree_gets_v1_cgroups_only_for_accounting_and_its_limits(
        places: dict[str, str]) -> None:
    # Each v1 directory costs a mkdir and an rmdir per tree: cpu (quota, weight) and io
    # (weight) get one only for a limit of theirs; memory, cpuacct and pids always (Usage).
    unused = {places[c] for c in ("cpu", "io") if c in places} - {
        places[c] for c in ("memory", "cpuacct", "pids") if c in places} - {"v2"}
    if not unused:
        pytest.skip(f"cpu and io share their hierarchies with accounting here: {places}")
    from conftest import require_mode

    require_mode("pidns")
    with tether.spawn(["sleep", "30"], contain="pidns",
                      limits=tether.Limits(memory=1 << 30)) as child:
        made = {os.path.dirname(os.path.dirname(d)) for d in _tree_dirs(places)}
        assert made == {places[c] for c in ("memory", "cpuacct", "pids")} - {"v2"}
        child.kill()


def test_the_guard_joins_a_v2_directory_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where a controller is on v2, a pidns tree's guard joins a v2 directory besides its v1
    # ones; v2 has no "tasks" file (the guard's v1 join), so it goes through cgroup.procs.
    # Made here on any host: this one has no controller on v2.
    from conftest import require_mode

    require_mode("pidns")
    require_mode("cgroup")
    from tether._kernel.cgroup import CgroupTree, cgroup_root

    make, made = controllers.LimitedTree.make, []

    def make_with_v2(limits: tether.Limits, mode: str, root: object) -> object:
        tree = make(limits, mode, None)
        v2 = CgroupTree.create(cgroup_root())
        tree.path, tree.fd = v2.path, v2.fd
        tree.join.append(v2.fd)
        made.append(v2.path)
        return tree

    monkeypatch.setattr(controllers.LimitedTree, "make", make_with_v2)
    script = "print(open('/proc/self/cgroup').read().split('0::')[1].strip())"
    result = tether.run([PY, "-c", script], contain="pidns", limits=tether.Limits(),
                        capture_output=True)
    assert result.returncode == 0, result.stderr
    inside = result.stdout.decode().strip()
    assert inside.count("/") > 1 and made[0].endswith(inside)
    assert not os.path.exists(made[0])


def test_the_final_usage_is_the_guards_report_of_what_the_directories_hold(
        limit_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard reads the tree's counters once the tree has ended and reports them with its
    # exit (MSG_EXITED's tail), so the parent reads no file after the guard's exit. What it
    # reports is what the directories hold then: read here again before their removal.
    seen: list[tuple[tether.Usage | None, tether.Usage]] = []
    remove = controllers.LimitedTree.remove

    def remove_after_reading(self: controllers.LimitedTree, timeout: float = 5.0) -> None:
        reported, self.final = self.final, None
        seen.append((reported, self.usage()))
        self.final = reported
        remove(self, timeout)

    monkeypatch.setattr(controllers.LimitedTree, "remove", remove_after_reading)
    burn = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; (true &); true"
    result = tether.run(["sh", "-c", burn], contain=limit_mode, limits=tether.Limits())
    assert result.returncode == 0
    [(reported, in_files)] = seen
    assert reported is not None, "the guard reported no usage"
    assert result.usage == reported
    assert reported.cpu > 0 and reported.pids_peak is not None and reported.pids_peak >= 3
    # The guard's own last microseconds, after its read, are in the files' CPU time only.
    assert reported.cpu == pytest.approx(in_files.cpu, abs=0.005)
    assert (reported.memory_peak, reported.oom_kills, reported.pids_peak) == (
        in_files.memory_peak, in_files.oom_kills, in_files.pids_peak)


def test_a_final_usage_read_without_the_guard_counts_the_tree_until_its_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A guard killed before its report leaves the final usage to the parent. In cgroup mode
    # the rest of the tree runs until the parent ends it: read before that, the "final"
    # usage missed what the tree did after the read (here: two forks, a peak of 3 read as 2).
    from conftest import require_mode

    LimitedTree = controllers.LimitedTree  # (the class whose read is patched below)
    require_mode("cgroup")
    code = ("import ctypes, os, time\n"
            "ctypes.CDLL(None).prctl(1, 0)\n"  # PR_SET_PDEATHSIG 0: outlive the guard
            "os.write(1, b'r')\n"
            "os.read(0, 1)\n"
            "for _ in range(2):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "os.write(1, b'f')\n"
            "time.sleep(60)\n")
    child = tether.spawn([PY, "-c", code], contain="cgroup", limits=tether.Limits(),
                         stdin=tether.PIPE, stdout=tether.PIPE)
    with child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.read(1) == b"r"
        tree = child._tree.cgroup
        assert isinstance(tree, LimitedTree)
        read = LimitedTree.usage
        after_read: list[bytes] = []

        def read_then_let_it_fork(self: LimitedTree) -> tether.Usage:
            usage = read(self)
            if self is tree and not after_read:
                # The barrier: once the tree's usage is read, the program (if it still runs)
                # forks twice; b"" if the tree was ended before the read.
                assert child.stdin is not None and child.stdout is not None
                try:
                    child.stdin.write(b"g")
                    child.stdin.close()
                except BrokenPipeError:
                    pass
                after_read.append(child.stdout.read(1))
            return usage

        monkeypatch.setattr(LimitedTree, "usage", read_then_let_it_fork)
        child._tree.spawned.pidfd.send_signal(signal.SIGKILL)  # the guard dies unreported
        with pytest.raises(ChildProcessError):
            child.wait()
    forked = after_read == [b"f"]
    assert child.usage().pids_peak == (3 if forked else 2), after_read


NEST_IN_OWN_MEMORY_CGROUP = """
import os
own = [line.split(":", 2)[2] for line in open("/proc/self/cgroup").read().splitlines()
       if "memory" in line.split(":")[1].split(",")][0]
mount = [line.split()[4] for line in open("/proc/self/mountinfo")
         if " - cgroup " in line and "memory" in line.split()[-1].split(",")][0]
os.mkdir(mount + own + "/inner")
"""


def test_a_cgroup_the_tree_made_inside_its_v1_directory_goes_with_it(
        limit_mode: str, places: dict[str, str]) -> None:
    # A tree may make cgroups inside its own (as root): its v1 directory is then removed
    # deepest first, as its v2 one is (it stayed, and the wait raised EBUSY after 5 s).
    if places.get("memory", "v2") == "v2":
        pytest.skip("the memory controller is on cgroup v2 here (a v2 directory's nested "
                    "cgroups are tested in test_contain.py)")
    result = tether.run([PY, "-c", NEST_IN_OWN_MEMORY_CGROUP],
                        contain=limit_mode, limits=tether.Limits(memory=256 << 20),
                        capture_output=True)
    assert result.returncode == 0, result.stderr
    # (the autouse fixture: no per-tree v1 directory is left)


# In a process of its own (a test's fd table is the harness's): the usage of a limited tree
# started under the lowest RLIMIT_NOFILE that lets it start.
LOWEST_FD_LIMIT = """
import errno, resource, sys, tether
from tether._kernel import v1_pool
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
tether.run(["true"], contain=sys.argv[1], limits=tether.Limits())  # (imports, sweeps)
for limit in range(8, 256):
    v1_pool.drain()  # (the pools' fds: not this start's)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        usage = tether.run(["true"], contain=sys.argv[1], limits=tether.Limits()).usage
        break
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(limit, usage.cpu > 0, usage.memory_peak is not None, usage.pids_peak)
"""


def test_the_lowest_fd_limit_a_limited_start_runs_under_still_reads_its_whole_usage(
        limit_mode: str) -> None:
    # The guard opens the files of the tree's usage while the program runs and reads them
    # at the end. Under the lowest RLIMIT_NOFILE a limited start runs under, a file it could
    # not open ahead is opened at the end, and must not fail there for want of the fds the
    # files it has read already still hold (pids.peak was lost: None where the guard that
    # opened each file at the end read 2).
    result = tether.run([PY, "-c", LOWEST_FD_LIMIT, limit_mode], capture_output=True,
                        text=True, check=True)
    assert result.stdout.split()[1:] == ["True", "True", "2"], result.stdout
