"""spawn_lifelined: the canonical primitive, and the parent-side conversion every spawn shares.

The one rule this module owns: every input is checked and converted here, in the parent,
before the clone; the child (C, async-signal-safe) receives only C arrays and ints. Bad input
raises a typed error before any process exists, and on every error path each fd this module
opened is closed again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Final, NamedTuple, TypeAlias

from tether._kernel import core as _core
from tether._kernel import features as _features
from tether._kernel.errors import Unsupported
from tether._kernel.lifeline import LIFELINE_ENV, LifelineWriter, _new_lifeline
from tether._kernel.pidfd import Pidfd

__all__ = ["Spawned", "spawn_lifelined"]

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
FileSpec: TypeAlias = "int | IO[bytes] | IO[str] | None"

# Stage numbers from _clone.h (enum tether_stage) and _guard_proto.h (guard setup stages).
_STAGES: Final = {
    1: "setting up the child's fds",
    2: "closing inherited fds",
    3: "setting PR_SET_PDEATHSIG",
    4: "checking the parent is alive",
    5: "setpgid",
    6: "chdir",
    7: "resetting signals",
    8: "exec",
    9: "user namespace setup",
    100: "guard setup",
    101: "clone in the guard",
    102: "user namespace setup",
    103: "cgroup setup",
}
STAGE_CHDIR: Final = 6
STAGE_EXEC: Final = 8


class Spawned(NamedTuple):
    """A lifelined child: its pid (for logs), its :class:`Pidfd`, and the parent's
    :class:`LifelineWriter`. Closing the writer (or the death of this process) is the child's
    signal that its parent is gone."""

    pid: int
    pidfd: Pidfd
    lifeline: LifelineWriter


# -- argument conversion ------------------------------------------------------------------------


def _to_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        out = value
    elif isinstance(value, str):
        out = os.fsencode(value)
    elif isinstance(value, os.PathLike):
        raw = os.fspath(value)
        out = raw if isinstance(raw, bytes) else os.fsencode(raw)
    else:
        raise TypeError(f"{what} must be str, bytes or os.PathLike, not {type(value).__name__}")
    if b"\0" in out:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    return out


def convert_argv(argv: object) -> list[bytes]:
    """Check and encode argv: a non-empty sequence of str/bytes/PathLike without NUL."""
    if isinstance(argv, str | bytes | os.PathLike):
        raise TypeError(
            "argv must be a sequence of arguments, not a single string "
            "(tether never runs a shell for you: use ['sh', '-c', cmd])"
        )
    if not isinstance(argv, Sequence):
        raise TypeError(f"argv must be a sequence, not {type(argv).__name__}")
    if len(argv) == 0:
        raise ValueError("argv must not be empty")
    return [_to_bytes(arg, f"argv[{i}]") for i, arg in enumerate(argv)]


class _CheckedEnv(dict[bytes, bytes]):
    """An environment that convert_env has already checked (so it is not checked twice)."""


def convert_env(env: Mapping[str, str] | Mapping[bytes, bytes] | None) -> dict[bytes, bytes]:
    """Check and encode the environment; None means a copy of os.environ."""
    if env is None:
        # CPython keeps os.environ's bytes in a plain dict; copying that is a C-level copy,
        # where walking the os.environb mapping costs tens of microseconds per spawn.
        data = getattr(os.environb, "_data", None)
        return _CheckedEnv(data if isinstance(data, dict) else os.environb)
    if type(env) is _CheckedEnv:
        return env  # converted by a caller of ours already (the guard launcher)
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    out: dict[bytes, bytes] = {}
    for key, value in env.items():
        k = _to_bytes(key, "env key")
        v = _to_bytes(value, f"env[{key!r}]")
        if not k or b"=" in k:
            raise ValueError(f"illegal environment variable name: {key!r}")
        out[k] = v
    return _CheckedEnv(out)


def envp_with_lifeline(env: dict[bytes, bytes], lifeline_fd: int | None) -> list[bytes]:
    """The child's envp: env with TETHER_LIFELINE_FD set (or removed when there is none)."""
    key = LIFELINE_ENV.encode()
    envp = [k + b"=" + v for k, v in env.items() if k != key]
    if lifeline_fd is not None:
        envp.append(key + b"=" + str(lifeline_fd).encode())
    return envp


def convert_cwd(cwd: StrOrBytesPath | None) -> bytes | None:
    """Encode cwd and check, before any clone, that it is a directory we can enter."""
    if cwd is None:
        return None
    raw = _to_bytes(cwd, "cwd")
    try:
        st = os.stat(raw)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, os.fsdecode(raw)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fsdecode(raw))
    return raw


def _exec_path(env: Mapping[bytes, bytes]) -> list[bytes]:
    path = env.get(b"PATH")
    if path is None:
        path = os.fsencode(os.defpath)
    return [d or b"." for d in path.split(b":")]


def resolve_executable(
    program: bytes, env: Mapping[bytes, bytes], cwd: bytes | None, display: object
) -> bytes:
    """Find the file execve will run, as subprocess would, and check it before the clone.

    A name with a slash is taken as is (relative to cwd); a bare name is looked up in the
    PATH of ``env`` (``os.defpath`` if it has none). Raises FileNotFoundError or
    PermissionError with ``filename`` set to the program as the caller spelt it.
    """
    filename = display if isinstance(display, str) else os.fsdecode(program)
    if b"/" in program:
        candidates = [program]
    else:
        candidates = [os.path.join(d, program) for d in _exec_path(env)]
    denied: OSError | None = None
    for candidate in candidates:
        probe = candidate if cwd is None else os.path.join(cwd, candidate)
        try:
            st = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            denied = exc
            continue
        if stat.S_ISDIR(st.st_mode) or not os.access(probe, os.X_OK):
            denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), filename)
            continue
        return candidate
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), filename)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), filename)


_FD_MAX: Final = 2**31 - 1


def check_fd_open(fd: int, what: str) -> None:
    if not 0 <= fd <= _FD_MAX:
        raise ValueError(f"{what}: {fd} is not a valid fd number")
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: fd {fd} is not open") from None


def convert_pass_fds(pass_fds: Iterable[int]) -> tuple[int, ...]:
    """Check pass_fds (each open, non-negative) and return the sorted set above 2."""
    if isinstance(pass_fds, str | bytes):
        raise TypeError("pass_fds must be a collection of ints")
    out: set[int] = set()
    for fd in pass_fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"pass_fds items must be ints, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"pass_fds: negative fd {fd}")
        check_fd_open(fd, "pass_fds")
        if fd > 2:
            out.add(fd)
    return tuple(sorted(out))


def lifeline_target(keep_fds: tuple[int, ...]) -> int:
    """The child's lifeline fd: the lowest number >= 3 that no passed fd uses."""
    fd = 3
    taken = set(keep_fds)
    while fd in taken:
        fd += 1
    return fd


class StdioPlan:
    """The child's fds 0-2 as parent-side fds (-1: inherit), plus what we opened for them."""

    __slots__ = ("fds", "opened")

    def __init__(self) -> None:
        self.fds = [-1, -1, -1]
        self.opened: list[int] = []

    def close_opened(self) -> None:
        for fd in self.opened:
            os.close(fd)
        self.opened.clear()


def _stdio_fd(spec: object, index: int, plan: StdioPlan, *, allow_pipe: bool) -> int:
    name = ("stdin", "stdout", "stderr")[index]
    if spec is None:
        return -1
    if spec is subprocess.DEVNULL:
        fd = os.open(os.devnull, (os.O_RDONLY if index == 0 else os.O_WRONLY) | os.O_CLOEXEC)
        plan.opened.append(fd)
        return fd
    if spec is subprocess.PIPE and not allow_pipe:
        raise ValueError(f"{name}=PIPE needs tether.spawn(); spawn_lifelined takes fds only")
    if isinstance(spec, bool):
        raise TypeError(f"{name} must be None, an fd, a file object or DEVNULL")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"{name}: invalid fd {spec}")
        check_fd_open(spec, name)
        return spec
    fileno = getattr(spec, "fileno", None)
    if fileno is None:
        raise TypeError(f"{name} must be None, an fd, a file object or DEVNULL")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{name}.fileno() returned {fd!r}")
    return fd


def convert_stdio(stdin: object, stdout: object, stderr: object) -> StdioPlan:
    """Turn subprocess-style stdio specs into fds. STDOUT for stderr means "where stdout goes"."""
    plan = StdioPlan()
    try:
        plan.fds[0] = _stdio_fd(stdin, 0, plan, allow_pipe=False)
        plan.fds[1] = _stdio_fd(stdout, 1, plan, allow_pipe=False)
        if stderr is subprocess.STDOUT:
            plan.fds[2] = plan.fds[1] if plan.fds[1] >= 0 else 1
        else:
            plan.fds[2] = _stdio_fd(stderr, 2, plan, allow_pipe=False)
    except BaseException:
        plan.close_opened()
        raise
    return plan


def child_error(stage: int, err: int, argv0: object, cwd: bytes | None) -> OSError:
    """The OSError subclass subprocess would raise for a failure in the child."""
    if stage == STAGE_CHDIR and cwd is not None:
        filename: object = os.fsdecode(cwd)
    elif stage == STAGE_EXEC:
        filename = argv0 if isinstance(argv0, str) else os.fsdecode(argv0)  # type: ignore[arg-type]
    else:
        filename = None
    exc = OSError(err, os.strerror(err), filename) if filename is not None else OSError(
        err, os.strerror(err)
    )
    exc.add_note(f"tether: the child failed while {_STAGES.get(stage, f'stage {stage}')}")
    return exc


def clone_method() -> int:
    """The cached clone method, or Unsupported if this kernel/sandbox has none."""
    method = _features.clone_method()
    if method == _core.CLONE_NONE:
        raise Unsupported(errno.ENOSYS, _features.clone_unsupported_reason())
    return method


# -- the primitive --------------------------------------------------------------------------------


def spawn_lifelined(
    argv: Sequence[StrOrBytesPath],
    *,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = None,
    stderr: FileSpec = None,
    pass_fds: Iterable[int] = (),
    process_group: bool = True,
) -> Spawned:
    """Start ``argv`` with a pidfd and a lifeline, in one clone.

    The child gets the lifeline's read end at the lowest fd >= 3 not in ``pass_fds``, named in
    ``TETHER_LIFELINE_FD``; fds 0-2 as given (None inherits, DEVNULL, an fd or a file object;
    ``stderr=subprocess.STDOUT`` too); ``pass_fds`` at their numbers; no other fd. With
    ``process_group`` (the default) it leads a new process group. Its signal mask is empty and
    its handlers are at their defaults (SIGPIPE and SIGXFSZ too, as subprocess does).

    Guarantee: the pidfd comes from ``clone3(CLONE_PIDFD)`` (or ``clone(CLONE_PIDFD)`` where
    seccomp blocks clone3) at the moment of creation, so it can never name another process;
    the lifeline's write end lives only in this process, so the child sees EOF when this
    process dies, however it dies.

    Errors, all raised before any process exists or with the failed child already reaped:
    TypeError/ValueError for malformed input, FileNotFoundError/PermissionError (``filename``
    set) for a program that cannot be run, FileNotFoundError naming ``cwd`` for a missing
    directory, OSError(EBADF) for a closed fd, :class:`tether.Unsupported` if the kernel has no
    pidfd-returning clone.
    """
    return _spawn(
        argv,
        env=env,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=pass_fds,
        process_group=process_group,
    )


def _spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None,
    cwd: StrOrBytesPath | None,
    stdin: object,
    stdout: object,
    stderr: object,
    pass_fds: Iterable[int],
    process_group: bool,
    executable: bytes | None = None,
    extra_flags: int = 0,
    cgroup_fd: int = -1,
    stdio_fds: tuple[int, int, int] | None = None,
) -> Spawned:
    """spawn_lifelined with the knobs the guard launcher needs (resolved executable,
    namespace flags, a cgroup to start in, ready-made stdio fds)."""
    argv_b = convert_argv(argv)
    env_b = convert_env(env)
    cwd_b = convert_cwd(cwd)
    keep = convert_pass_fds(pass_fds)
    path = executable if executable is not None else resolve_executable(
        argv_b[0], env_b, cwd_b, argv[0]
    )
    method = clone_method()
    if method != _core.CLONE_CLONE3 and (extra_flags or cgroup_fd >= 0):
        raise Unsupported(
            errno.ENOSYS,
            "new namespaces and CLONE_INTO_CGROUP need clone3 (Linux 5.3/5.7), and clone3 is "
            f"not available here ({_features.CLONE_METHOD_NAMES[method]} is used)",
        )
    lifeline_dst = lifeline_target(keep)
    envp = envp_with_lifeline(env_b, lifeline_dst)
    if stdio_fds is None:
        plan = convert_stdio(stdin, stdout, stderr)
    else:
        plan = StdioPlan()
        plan.fds = list(stdio_fds)
    try:
        read_fd, writer = _new_lifeline()
        try:
            pid, pidfd, stage, err, _ = _core.spawn(
                path=path,
                argv=argv_b,
                envp=envp,
                cwd=cwd_b,
                stdin=plan.fds[0],
                stdout=plan.fds[1],
                stderr=plan.fds[2],
                keep_fds=keep,
                lifeline_src=read_fd,
                lifeline_dst=lifeline_dst,
                new_pgroup=process_group,
                pdeathsig=0,
                extra_flags=extra_flags,
                cgroup_fd=cgroup_fd,
                method=method,
            )
        except BaseException:
            writer.close()
            raise
        finally:
            os.close(read_fd)
    finally:
        plan.close_opened()
    if pidfd < 0:
        writer.close()
        raise child_error(stage, err, argv[0], cwd_b)
    return Spawned(pid, Pidfd._create(pidfd, pid, reaper=True, cmd=list(argv)), writer)
