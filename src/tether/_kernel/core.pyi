"""Type stub for tether._core, the C extension (L0)."""

CLONE_UNKNOWN: int
CLONE_CLONE3: int
CLONE_LEGACY: int
CLONE_NONE: int
CLONE_NEWPID: int
CLONE_NEWUSER: int
SFD_CLOEXEC: int
SFD_NONBLOCK: int

def spawn(
    *,
    path: bytes,
    argv: list[bytes],
    envp: list[bytes],
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
) -> tuple[int, int, int, int, int]: ...
def clone_method() -> tuple[int, int, int]: ...
def force_clone_method(method: int, /) -> None: ...
def close_range_supported() -> bool: ...
def lifeline_pipe() -> tuple[int, int]: ...
def lifeline_release(fd: int, /) -> None: ...
def lifeline_count() -> int: ...
def fork_generation() -> int: ...
def signalfd(fd: int, signals: list[int] | tuple[int, ...], flags: int, /) -> int: ...
