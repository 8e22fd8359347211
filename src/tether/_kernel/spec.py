"""SpawnSpec: what to start, checked and converted once.

The one rule this module owns: every spawn argument is checked and converted here, in the
parent, exactly once, into a frozen :class:`SpawnSpec`; the C core consumes it as it is and
the guard launch serialises it onto the guard's command line. The child (C,
async-signal-safe) receives only C arrays and ints. Bad input raises a typed error before any
process exists; the only resources a spec stands for (DEVNULL and PIPE fds) are opened by
:meth:`SpawnSpec.open_stdio` at the last moment, and every error path closes them again.

A new process attribute plugs in here: a field, its check in :meth:`SpawnSpec.build`, and
its hand-over in ``spawn.clone_spec`` (and, for guarded trees, in the guard's argv).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final, TypeAlias

from tether._kernel import core
from tether._kernel.attrs import ProcessAttrs
from tether._kernel.fds import above_spawns, above_stdio
from tether._kernel.limits import Limits
from tether._kernel.record import frozen_record, replace

__all__ = ["FileSpec", "SpawnSpec", "StdioPlan", "StrOrBytesPath"]

StrOrBytesPath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"
FileSpec: TypeAlias = "int | IO[bytes] | IO[str] | None"
EnvSpec: TypeAlias = "Mapping[str, str] | Mapping[bytes, bytes] | None"

# What a spec says about each of fds 0-2 besides "this fd of ours" (>= 0).
INHERIT: Final = -1
DEVNULL: Final = -2
PIPE: Final = -3
SAME_AS_STDOUT: Final = -4  # stderr=subprocess.STDOUT
# subprocess's own PIPE, STDOUT and DEVNULL, by value (tests/test_cli_import_cost.py checks):
# importing subprocess would cost every start-up of `tether run`.
SUBPROCESS_PIPE: Final = -1
SUBPROCESS_STDOUT: Final = -2
SUBPROCESS_DEVNULL: Final = -3
_NAMES: Final = ("stdin", "stdout", "stderr")
_FD_MAX: Final = 2**31 - 1


@frozen_record
class SpawnSpec:
    """One program to start, every field already checked and converted.

    ``args`` is the argv as the caller gave it (for ``Child.args`` and error messages);
    ``argv``/``executable``/``cwd`` are bytes; ``env`` is the environment without the
    lifeline variable (added at the clone); ``pass_fds`` are sorted, open and above 2;
    ``stdio`` holds an fd or one of INHERIT, DEVNULL, PIPE, SAME_AS_STDOUT per stream."""

    args: Any
    argv: tuple[bytes, ...]
    executable: bytes
    env: Mapping[bytes, bytes]
    cwd: bytes | None
    pass_fds: tuple[int, ...]
    stdio: tuple[int, int, int]
    process_group: bool = True
    #: The whole tree's resource limits (per-tree cgroups; None: none asked for).
    limits: Limits | None = None
    attrs: ProcessAttrs | None = None
    preexec_fn: Callable[[], object] | None = None
    #: env was not given: the program gets this process's environment. On the preexec_fn
    #: path that is the environment as preexec_fn left it (os.putenv there reaches the
    #: program, as with the stdlib), read again in the forked child.
    inherit_env: bool = False

    @classmethod
    def build(
        cls,
        argv: Sequence[StrOrBytesPath],
        *,
        env: EnvSpec = None,
        cwd: StrOrBytesPath | None = None,
        stdin: object = None,
        stdout: object = None,
        stderr: object = None,
        pass_fds: Iterable[int] = (),
        process_group: bool = True,
        popen_style: bool = False,
        limits: Limits | None = None,
        executable: StrOrBytesPath | None = None,
        attrs: ProcessAttrs | None = None,
        preexec_fn: Callable[[], object] | None = None,
    ) -> SpawnSpec:
        """Check and convert everything; nothing is opened.

        ``popen_style`` is for the Popen-like entry points (spawn, run, tether.aio): PIPE is
        accepted, and the streams are checked first, as subprocess.Popen does. Without it
        (spawn_lifelined: fds only) they are checked after the program was found.
        ``executable`` is the file to run in place of ``argv[0]`` (which the program still
        sees as its name); ``attrs`` are subprocess's process attributes, checked already
        (see :mod:`tether._kernel.attrs`); ``preexec_fn`` takes the slow path that forks
        this process to run it (:mod:`tether._kernel.preexec`)."""
        if preexec_fn is not None and not callable(preexec_fn):
            raise TypeError("preexec_fn must be callable")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a tether.Limits, not {type(limits).__name__}")
        if popen_style:
            stdio = convert_stdio(stdin, stdout, stderr, allow_pipe=True)
        argv_b = convert_argv(argv)
        env_b = convert_env(env)
        cwd_b = convert_cwd(cwd)
        keep = convert_pass_fds(pass_fds)
        if executable is None:
            path = resolve_executable(argv_b[0], env_b, cwd_b, argv[0])
        else:
            path = resolve_executable(_to_bytes(executable, "executable"), env_b, cwd_b,
                                      executable)
        if not popen_style:
            stdio = convert_stdio(stdin, stdout, stderr, allow_pipe=False)
        args = argv if isinstance(argv, list) else list(argv)
        return cls(args, tuple(argv_b), path, env_b, cwd_b, keep, stdio, process_group, limits,
                   attrs, preexec_fn, env is None)

    def replace(self, **changes: Any) -> SpawnSpec:
        """A copy with ``changes`` (already converted: nothing is checked again)."""
        return replace(self, **changes)

    def attr_options(self) -> list[bytes]:
        """The guard's options for the process attributes of this spec's program."""
        return [] if self.attrs is None else self.attrs.guard_options()

    def guard_attrs(self) -> ProcessAttrs | None:
        """The attributes of the guard's own clone (see ProcessAttrs.for_guard)."""
        return None if self.attrs is None else self.attrs.for_guard()

    @property
    def lifeline_fd(self) -> int:
        """The child's lifeline fd: the lowest number >= 3 that no passed fd uses."""
        fd = 3
        taken = set(self.pass_fds)
        # close_fds=False: every inheritable fd of ours reaches the child at its number, so
        # the lifeline takes a number that is free here.
        inherit = self.attrs is not None and self.attrs.inherit_fds
        while fd in taken or (inherit and fd_is_open(fd)):
            fd += 1
        return fd

    def open_stdio(self) -> StdioPlan:
        """Open what ``stdio`` asks for (/dev/null, pipes): the child's fds 0-2 and, for each
        PIPE, the parent's end. The caller closes ``plan.close_child_ends()`` after the clone."""
        plan = StdioPlan()
        if self.stdio == (INHERIT, INHERIT, INHERIT):  # (the default: nothing to open)
            return plan
        try:
            for index, source in enumerate(self.stdio):
                if source == SAME_AS_STDOUT:
                    plan.fds[2] = plan.fds[1] if plan.fds[1] >= 0 else 1
                elif source in (DEVNULL, PIPE):
                    plan.open_for_child(index, source == PIPE)
                else:
                    plan.fds[index] = source
        except BaseException:
            plan.close_child_ends()
            plan.close_parent_ends()
            raise
        return plan


class StdioPlan:
    """The child's fds 0-2 as parent-side fds (-1: inherit), the fds opened for the child
    (closed once it is cloned) and the parent's ends of PIPEs (None where there is none)."""

    __slots__ = ("child_ends", "fds", "parent_ends")

    def __init__(self) -> None:
        self.fds = [-1, -1, -1]
        self.child_ends: list[int] = []
        self.parent_ends: list[int | None] = [None, None, None]

    @property
    def triple(self) -> tuple[int, int, int]:
        return self.fds[0], self.fds[1], self.fds[2]

    def open_for_child(self, index: int, pipe: bool) -> None:
        """Open the child's fd ``index``: /dev/null, or a pipe whose other end we keep. Both
        land above 2 even in a parent whose stdio is closed: at 0-2 they would pose as the
        parent's own stdio, to the parent and to every child that inherits it."""
        if pipe:
            r, w = os.pipe2(os.O_CLOEXEC)
            child_end, parent_end = (r, w) if index == 0 else (w, r)
            try:
                self.parent_ends[index] = above_spawns(parent_end)
            except BaseException:
                os.close(child_end)
                raise
            fd = above_stdio(child_end)
        else:
            flags = (os.O_RDONLY if index == 0 else os.O_WRONLY) | os.O_CLOEXEC
            fd = above_stdio(os.open(os.devnull, flags))
        self.child_ends.append(fd)
        self.fds[index] = fd

    def close_child_ends(self) -> None:
        for fd in self.child_ends:
            os.close(fd)
        self.child_ends.clear()

    def close_parent_ends(self) -> None:
        for index, fd in enumerate(self.parent_ends):
            if fd is not None:
                os.close(fd)
                self.parent_ends[index] = None


# -- the conversions --------------------------------------------------------------------------


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
    if type(argv) is list or type(argv) is tuple:
        # The common case (str and bytes, no NUL) in one C call; the rest checked below.
        out = core.fs_args(argv)
        if out:
            return out
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


def convert_env(env: EnvSpec) -> dict[bytes, bytes]:
    """Check and encode the environment; None means a copy of os.environ."""
    if env is None:
        # CPython keeps os.environ's bytes in a plain dict; copying that is a C-level copy,
        # where walking the os.environb mapping costs tens of microseconds per spawn.
        data = getattr(os.environb, "_data", None)
        return dict(data if isinstance(data, dict) else os.environb)
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    out: dict[bytes, bytes] = {}
    for key, value in env.items():
        k = _to_bytes(key, "env key")
        v = _to_bytes(value, f"env[{key!r}]")
        if not k or b"=" in k:
            raise ValueError(f"illegal environment variable name: {key!r}")
        out[k] = v
    return out


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
    if b"/" in program:
        candidates = [program]
    else:  # (os.path.join, for a name without a slash and a non-empty directory)
        candidates = [d + program if d.endswith(b"/") else d + b"/" + program
                      for d in _exec_path(env)]
    probes = candidates if cwd is None else [os.path.join(cwd, c) for c in candidates]
    # The misses (most of PATH) skipped in C, each a FileNotFoundError here, and the file
    # found tested there too: this loop runs only where that test failed.
    first, runnable = core.find_program(tuple(probes))
    if runnable:
        return candidates[first]
    filename = display if isinstance(display, str) else os.fsdecode(program)
    denied: OSError | None = None
    for candidate, probe in zip(candidates[first:], probes[first:], strict=True):
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


def fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def check_fd_open(fd: int, what: str) -> None:
    if not 0 <= fd <= _FD_MAX:
        raise ValueError(f"{what}: {fd} is not a valid fd number")
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: fd {fd} is not open") from None


def convert_pass_fds(pass_fds: Iterable[int]) -> tuple[int, ...]:
    """Check pass_fds (each open, non-negative) and return the sorted set above 2."""
    if type(pass_fds) is tuple and not pass_fds:  # (the default; no caller's __eq__ run)
        return ()
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


def _stdio_source(spec: object, index: int, allow_pipe: bool) -> int:
    name = _NAMES[index]
    if spec is None:
        return INHERIT
    if spec is SUBPROCESS_DEVNULL:
        return DEVNULL
    if spec is SUBPROCESS_PIPE:
        if not allow_pipe:
            raise ValueError(f"{name}=PIPE needs tether.spawn(); spawn_lifelined takes fds only")
        return PIPE
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


def convert_stdio(
    stdin: object, stdout: object, stderr: object, *, allow_pipe: bool
) -> tuple[int, int, int]:
    """subprocess-style stdio specs as spec sources. STDOUT for stderr: "where stdout goes"."""
    if stdin is None and stdout is None and stderr is None:  # (the default)
        return INHERIT, INHERIT, INHERIT
    err = SAME_AS_STDOUT if stderr is SUBPROCESS_STDOUT else _stdio_source(stderr, 2, allow_pipe)
    return (_stdio_source(stdin, 0, allow_pipe), _stdio_source(stdout, 1, allow_pipe), err)
