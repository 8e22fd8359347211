"""tether doctor: which kernel primitives and containment modes this machine has.

Every row is a real probe (a syscall tried for real, once), never a version comparison:
sandboxes (seccomp, containers) take away what the kernel version promises.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from dataclasses import asdict, dataclass

from tether._kernel import core as _core
from tether._kernel import features as _features
from tether._kernel.cgroup import cgroup_root, cgroup_unavailable_reason
from tether._kernel.controllers import controller_places
from tether._kernel.errors import Unsupported
from tether._kernel.guard_build import guard_build
from tether._kernel.pidfd import PIDFD_SIGNAL_PROCESS_GROUP
from tether._tree.modes import devnull, guard_path, pidns_unavailable_reason

__all__ = ["doctor", "probe_all"]


@dataclass
class Row:
    name: str
    since: str
    here: bool
    detail: str
    core: bool = False  # a core guarantee depends on it


def _own_pidfd() -> int:
    # Our own PID cannot be stale: this is the one number-to-handle step that is always exact.
    return os.pidfd_open(os.getpid())  # noqa: TET401  own pid, see above


def _probe_group_signal() -> tuple[bool, str]:
    fd = _own_pidfd()
    try:
        # Signal 0 only checks. EINVAL: the flag is unknown; anything else: it is understood.
        signal.pidfd_send_signal(fd, 0, None, PIDFD_SIGNAL_PROCESS_GROUP)
        return True, "works"
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False, "the kernel rejects the flag (EINVAL)"
        return True, f"understood ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    finally:
        os.close(fd)


def _probe_info() -> tuple[tuple[bool, str], tuple[bool, str], tuple[bool, str]]:
    """PIDFD_GET_INFO, PIDFD_INFO_EXIT and pidfs, asked of one short-lived child."""
    from tether._kernel.spawn import spawn_lifelined

    s = spawn_lifelined([guard_path()], stdout=devnull(), stderr=devnull())
    s.lifeline.close()
    s.pidfd.wait()
    try:
        pidfs = _pidfs_probe(s.pidfd.fileno())
        try:
            info = s.pidfd.info()
        except Unsupported as exc:
            return (False, str(exc)), (False, "needs PIDFD_GET_INFO"), pidfs
    finally:
        s.pidfd.close()
    if info.exit is not None:
        return (True, "ioctl works"), (True, "exit status of a reaped process"), pidfs
    return (True, "ioctl works"), (False, "no PIDFD_INFO_EXIT bit after reap"), pidfs


def _pidfs_probe(other_fd: int) -> tuple[bool, str]:
    # On pidfs (6.9+) every process has its own inode; on the old anon-inode pidfds all
    # pidfds share one inode.
    own = _own_pidfd()
    try:
        same = os.fstat(own).st_ino == os.fstat(other_fd).st_ino
    finally:
        os.close(own)
    return (not same, "one inode per process" if not same else "shared anon inode")


def _seccomp_mode() -> str:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return {"0": "off", "1": "strict", "2": "filter"}.get(line.split()[1], "?")
    except OSError:
        pass
    return "unknown"


def clone_rows(method: int, clone3_errno: int, legacy_errno: int) -> list[Row]:
    """The clone rows from what the probe observed: the method chosen and each call's errno
    (0: it worked, or was not tried). Seccomp may answer anything (EPERM, ENOSYS, EINVAL...),
    so the rows say what came back, never what it is presumed to mean."""
    def answered(call: str, err: int) -> str:
        if not err:
            return f"{call} was not tried"
        return f"{call} answered {errno.errorcode.get(err, err)}"

    clone3_ok = method == _core.CLONE_CLONE3
    pidfd_ok = method in (_core.CLONE_CLONE3, _core.CLONE_LEGACY)
    clone3 = answered("clone3", clone3_errno)
    legacy = answered("the legacy clone(CLONE_PIDFD)", legacy_errno)
    if clone3_ok:
        observed = "clone3 works and is used"
    elif pidfd_ok:
        observed = f"{clone3}; the legacy clone(CLONE_PIDFD) works and is used"
    else:
        observed = f"{clone3} and {legacy}: no clone is used"
    return [
        Row("clone3", "5.3", clone3_ok, "vfork-style clone3 works" if clone3_ok else clone3),
        Row("CLONE_PIDFD", "5.2", pidfd_ok,
            _features.CLONE_METHOD_NAMES[method] if pidfd_ok
            else f"no pidfd-returning clone here: {clone3}, {legacy}", core=True),
        Row("CLONE_CLEAR_SIGHAND", "5.5", clone3_ok,
            "with clone3" if clone3_ok
            else "not used: handlers are reset by hand in the legacy path" if pidfd_ok
            else "not used: no clone works"),
        Row("seccomp lets clone3 through", "-", clone3_ok,
            f"seccomp: {_seccomp_mode()}; {observed}"),
    ]


def guard_build_row() -> Row:
    """The installed guard's build: libc-free (x86_64/aarch64) starts at the exec floor; a
    libc build (other architectures, or a failed libc-free build) says which libc."""
    kind = guard_build(guard_path())
    return Row("guard links no libc", "-", kind.startswith("libc-free"), f"guard: {kind}")


def controller_rows() -> list[Row]:
    """Limits and accounting, per controller: on cgroup v2, on a v1 hierarchy, or nowhere."""
    places = controller_places()
    rows = []
    for controller in ("memory", "cpu", "cpuacct", "pids", "io"):
        where = places.get(controller)
        detail = ("cgroup v2" if where == "v2" else f"cgroup v1 ({where})" if where
                  else "on no hierarchy here: its limits raise Unsupported")
        rows.append(Row(f"limits: {controller}", "-", where is not None, detail))
    return rows


def fd_table_row(shared: bool, err: int) -> Row:
    """How a spawn's clone gets its fd table (fd_table.c), as the probe's child found it."""
    why = errno.errorcode.get(err, str(err))
    return Row("CLOSE_RANGE_UNSHARE", "5.9", shared,
               "spawns share the fd table and the child keeps only its low fds"
               if shared else f"spawns copy the whole fd table (the unshare failed: {why})")


def probe_all() -> tuple[list[Row], dict[str, str | None]]:
    method = _features.clone_method()
    _, clone3_errno, legacy_errno = _core.clone_method()
    rows = clone_rows(method, clone3_errno, legacy_errno)
    pidfd_ok = method in (_core.CLONE_CLONE3, _core.CLONE_LEGACY)
    ok, detail = _probe_group_signal()
    rows.append(Row("PIDFD_SIGNAL_PROCESS_GROUP", "6.9", ok, detail))
    if pidfd_ok:
        info_row, exit_row, pidfs_row = _probe_info()
    else:
        info_row = exit_row = pidfs_row = (False, "no pidfd to probe")
    rows.append(Row("PIDFD_GET_INFO", "6.13", *info_row))
    rows.append(Row("PIDFD_INFO_EXIT", "6.15", *exit_row))
    rows.append(Row("pidfs ids", "6.9", *pidfs_row))
    cr = _core.close_range_supported()
    rows.append(Row("close_range", "5.9", cr, "works" if cr else "ENOSYS", core=True))
    rows.append(fd_table_row(*_features.fd_table_shared()) if pidfd_ok else
                Row("CLOSE_RANGE_UNSHARE", "5.9", False, "no clone to probe with"))
    reason = cgroup_unavailable_reason()
    rows.append(Row("cgroup v2 writable", "4.5", reason is None,
                    f"at {cgroup_root()}" if reason is None else reason))
    rows.append(Row("cgroup.kill", "5.14", reason is None,
                    "present" if reason is None else "see above"))
    try:
        guard_path()
        guard_ok, guard_detail = True, "installed"
    except Unsupported as exc:
        guard_ok, guard_detail = False, str(exc)
    rows.append(Row("guard executable", "-", guard_ok, guard_detail, core=True))
    rows.append(guard_build_row() if guard_ok else
                Row("guard links no libc", "-", False, "needs the guard"))
    overlapped = pidfd_ok and guard_ok and _features.overlapped_start()
    rows.append(Row("overlapped start", "-", overlapped,
                    "a guarded start clones the program before the guard's exec (not with a "
                    "terminal's foreground, close_fds=False, preexec_fn)"
                    if overlapped else "the guard starts the program after its exec"))
    pidns = pidns_unavailable_reason() if guard_ok else "needs the guard"
    ns_name = "PID namespaces" if os.geteuid() == 0 else "user + PID namespaces"
    rows.append(Row(ns_name, "3.8", pidns is None, "works" if pidns is None else pidns))
    rows += controller_rows()

    modes: dict[str, str | None] = {
        "group": None if pidfd_ok and guard_ok else "needs a pidfd clone and the guard",
        "cgroup": reason or (
            None if method == _core.CLONE_CLONE3 else "needs clone3 (CLONE_INTO_CGROUP)"),
        "pidns": pidns,
    }
    return rows, modes


def doctor(*, as_json: bool = False) -> int:
    """Print the probe table; exit 0 when the core guarantees hold here."""
    rows, modes = probe_all()
    core_ok = all(r.here for r in rows if r.core)
    auto = next((m for m in ("pidns", "cgroup", "group") if modes[m] is None), None)
    if as_json:
        print(json.dumps({
            "kernel": os.uname().release,
            "primitives": [asdict(r) for r in rows],
            "modes": {m: {"available": why is None, "reason": why} for m, why in modes.items()},
            "auto": auto,
            "core_guarantees": core_ok,
        }, indent=2))
        return 0 if core_ok else 1
    print(f"tether doctor — Linux {os.uname().release}")
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "yes" if r.here else "no "
        print(f"  {r.name:<{width}}  since {r.since:<5} here: {mark}  ({r.detail})")
    print("containment modes:")
    for m, why in modes.items():
        print(f"  {m:<7} {'available' if why is None else 'unavailable: ' + why}")
    print(f"  auto    -> {auto}")
    print("core guarantees: " + ("hold" if core_ok else "DO NOT HOLD here"))
    return 0 if core_ok else 1
