"""Type stub for tether._kernel.core, the C extension (L0)."""

from collections.abc import Mapping

CLONE_UNKNOWN: int
CLONE_CLONE3: int
CLONE_LEGACY: int
CLONE_NONE: int
CLONE_IN_PLACE: int
CLONE_NEWPID: int
CLONE_NEWUSER: int
TREE_FD_BASE: int
SFD_CLOEXEC: int
SFD_NONBLOCK: int

# Failure stages: clone.h's child stages and guard_proto.h's guard setup stages (100-103),
# number -> what was being done.
STAGES: dict[int, str]
STAGE_CHDIR: int
STAGE_EXEC: int
STAGE_PREEXEC: int

# The guard's wire protocol (guard_proto.h).
GUARD_MSG_FORMAT: str
GUARD_MSG_SIZE: int
GUARD_MSG_STARTED: int
GUARD_MSG_FAILED: int
GUARD_MSG_EXITED: int
GUARD_MSG_PROGRAM: int
GUARD_MSG_STOPPED: int
GUARD_MSG_SIGNAL_TREE: int
GUARD_MSG_KILL_TREE: int
GUARD_USAGE_FORMAT: str
LIFELINE_ENV: str
GUARD_USAGE_SIZE: int

def spawn(
    *,
    path: bytes,
    argv: list[bytes],
    env: Mapping[bytes, bytes],
    cwd: bytes | None,
    stdin: int,
    stdout: int,
    stderr: int,
    keep_fds: tuple[int, ...],
    lifeline_src: int,
    lifeline_dst: int,
    new_pgroup: bool,
    pdeathsig: int,
    extra_flags: int,
    cgroup_fd: int,
    method: int,
    attrs: tuple[int, bool, bool, bool, int, int, tuple[int, ...] | None] | None = None,
) -> tuple[int, int, int, int, int]: ...
# The overlapped start (launch_early.c): the program's attributes (as ``attrs``), its
# pass_fds, whether it has a lifeline, its cgroup fd or -1, the cgroup directories to join,
# whether it runs in a cpu group of its own (its exec is then polled for before a sleep).
EarlyStart = tuple[
    tuple[int, bool, bool, bool, int, int, tuple[int, ...] | None] | None, tuple[int, ...], bool,
    int, tuple[int, ...], bool]

def launch_guard(
    *,
    path: bytes,
    head: tuple[bytes, ...],
    tail: tuple[bytes, ...],
    env: Mapping[bytes, bytes],
    cwd: bytes | None,
    stdin: int,
    stdout: int,
    stderr: int,
    keep_fds: tuple[int, ...],
    new_pgroup: bool,
    extra_flags: int,
    method: int,
    attrs: tuple[int, bool, bool, bool, int, int, tuple[int, ...] | None] | None = None,
    wait_mask: int | None = None,
    early: EarlyStart | None = None,
    wait_start: bool = True,
) -> tuple[int, int, int, int, int, int, bool]: ...
def read_start_reports(fd: int, flags: int, /) -> tuple[tuple[bytes, int, int, int], ...]: ...
def clone_method() -> tuple[int, int, int]: ...
def force_clone_method(method: int, /) -> None: ...
def close_range_supported() -> bool: ...
def fd_table_sharing(method: int, /) -> tuple[bool, int]: ...
def force_fd_table_sharing(shared: bool | None, /) -> None: ...
def keep_above_spawns(fd: int, /) -> int: ...
def lifeline_pipe() -> tuple[int, int]: ...
def lifeline_release(fd: int, /) -> None: ...
def fork_generation() -> int: ...
def signalfd(fd: int, signals: list[int] | tuple[int, ...], flags: int, /) -> int: ...

def hold_signals() -> int: ...
def release_signals(mask: int, /) -> None: ...

# end.c: the parent's end of a guarded tree.
END_READY: int
END_EARLY: int

def await_end(
    guard_fd: int, program_fd: int, sock_fd: int, on_sock: bool, timeout_ms: int,
    spin_ns: int, /,
) -> int: ...
def read_end(
    sock_fd: int, guard_fd: int,
    out: list[tuple[int, int, int, int, int, int, int, tuple[int, ...] | None]],
    skip_started: bool = False, /,
) -> bytes | bool | None: ...
def reap_exiting(guard_fd: int, spin_ns: int, /) -> tuple[int, int]: ...
def find_program(paths: tuple[bytes, ...], /) -> tuple[int, bool]: ...
def fs_args(args: object, /) -> list[bytes] | None: ...
def spin_readable(fd: int, spin_ns: int, /) -> bool: ...
