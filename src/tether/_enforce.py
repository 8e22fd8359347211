"""tether.enforce(): at run time, forbid the never-use process primitives outside tether.

The one rule this module owns: once `enforce()` has run, a forbidden primitive called from code
that is not tether's raises `DoctrineViolation` *before* it acts (no process is created, no
signal sent, no file opened).  It is a `sys.addaudithook` hook, so it sees what CPython audits
and nothing else; `tether lint` covers the rest statically.

Who is calling: the hook walks the Python stack from the audited call outwards, skipping
standard-library frames (``subprocess.py``, ``multiprocessing/``, the frozen ``os`` module), and
the first other frame decides.  A frame in the tether package is allowed (``run_in_fork`` forks,
``attach`` kills its own group); anything else -- user code, third-party packages, a callable
that tether runs in a forked child -- is a violation.  ``tether/_kernel/usercall.py`` is not
trusted, which is what makes `call_as_user` work: tether code that calls a user-supplied
callable goes through it, so that ``run_in_fork(os.system, "...")`` (a builtin, with no frame
of its own) is charged to the user and not to tether's call site.

What the audit mechanism cannot see (CPython 3.11 raises no audit event for these, or they never
pass through Python):

* ``os.waitpid``/``os.wait``/``wait3``/``wait4``/``waitid``, ``os.pidfd_open``,
  ``signal.signal``;
* C extensions and ``ctypes`` calling libc (``fork()``, ``kill()``) directly, and
  ``_posixsubprocess.fork_exec`` called directly (multiprocessing's "spawn" and "forkserver"
  start methods do this; its "fork" method goes through ``os.fork`` and is caught);
* ``/proc`` paths reached relatively (``dir_fd=``, or after ``os.chdir("/proc")``).

An audit hook cannot be removed, so `enforce()` lasts for the life of the process (and is
inherited by forked children).  Test it in a child process.
"""

from __future__ import annotations

import os
import reprlib
import sys
import sysconfig
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Final

from tether._kernel.usercall import USER_CALL_FILE, call_as_user

__all__ = ["DoctrineViolation", "call_as_user", "enforce"]

class DoctrineViolation(RuntimeError):
    """A never-use primitive was called from outside tether while `enforce()` is active.

    The message names the primitive (the audit event, e.g. ``os.kill``) and its tether
    replacement; `event` and `replacement` hold them for programs.  The primitive did not run.
    A `RuntimeError`, so generic error handling around the call still catches it.
    """

    def __init__(self, event: str, call: str, replacement: str) -> None:
        super().__init__(
            f"{call} is forbidden by tether.enforce(); use {replacement} "
            f"(tether.enforce(allow=[{event!r}]) permits it)"
        )
        self.event = event
        self.replacement = replacement


#: Audit event -> the tether replacement named in the error.
_REPLACEMENTS: Final[dict[str, str]] = {
    "os.fork": "tether.run_in_fork()",
    "os.forkpty": "tether.run_in_fork()",
    "os.posix_spawn": "tether.spawn() / tether.spawn_lifelined()",
    "os.system": "tether.run()",
    # exec from Python is the second half of a fork+exec done by hand; os.spawn* (Python code
    # in os.py on Linux; the "os.spawn" event is Windows-only) surface as os.fork and os.exec.
    "os.exec": "tether.spawn() / tether.spawn_lifelined()",
    "subprocess.Popen": "tether.spawn() / tether.run()",
    "os.kill": "Pidfd.send_signal() / Child.send_signal()",
    "os.killpg": "Child.send_signal() (tether signals the group through the leader's pidfd)",
    "signal.pthread_kill": "threading.Event or queue.Queue to wake a thread",
    # Path events: only a /proc/<pid> of another process, or /proc itself, is forbidden.
    "open": "Pidfd.poll() / Pidfd.wait() / Pidfd.info() instead of /proc/<pid>",
    "os.listdir": "the process tree tether contains (group / cgroup / pidns), not /proc",
    "os.scandir": "the process tree tether contains (group / cgroup / pidns), not /proc",
}
_PATH_EVENTS: Final = frozenset({"open", "os.listdir", "os.scandir"})

_OUTSIDE, _STDLIB, _TETHER = 0, 1, 2
_THIS_FILE: Final = os.path.realpath(__file__)
_TETHER_DIR: Final = os.path.dirname(_THIS_FILE) + os.sep
_STDLIB_DIRS: Final = tuple(
    {os.path.realpath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")}
)
# Third-party packages installed under the stdlib directory are not the stdlib.
_NOT_STDLIB: Final = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)

_lock = threading.Lock()
_installed_allow: frozenset[str] | None = None
_watched: frozenset[str] = frozenset()
_origin_by_filename: dict[str, int] = {}


def _origin(filename: str) -> int:
    """Whether code from `filename` is tether's, the stdlib's, or anyone else's (cached)."""
    origin = _origin_by_filename.get(filename)
    if origin is not None:
        return origin
    if filename.startswith("<frozen "):
        origin = _STDLIB  # os, importlib, codecs...: frozen into the 3.11 interpreter
    else:
        path = os.path.realpath(filename)
        if path in (_THIS_FILE, USER_CALL_FILE):
            origin = _OUTSIDE
        elif path.startswith(_TETHER_DIR):
            origin = _TETHER
        elif path.startswith(_STDLIB_DIRS) and not any(part in path for part in _NOT_STDLIB):
            origin = _STDLIB
        else:
            origin = _OUTSIDE
    _origin_by_filename[filename] = origin
    return origin


def _called_from_tether(frame: FrameType | None) -> bool:
    while frame is not None:
        origin = _origin(frame.f_code.co_filename)
        if origin != _STDLIB:
            return origin == _TETHER
        frame = frame.f_back
    return False


def _names_other_process(path: object) -> bool:
    """Whether `path` is ``/proc`` itself or ``/proc/<pid>/...`` of a process other than us."""
    if isinstance(path, int):
        return False  # an fd: whatever it is, it was opened (and checked) by name earlier
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        return False
    if "/proc" not in text:
        return False
    # normpath folds "/proc/self/../123" and "/proc//123"; POSIX keeps a leading "//".
    text = os.path.normpath(text)
    if text.startswith("//"):
        text = text[1:]
    if text == "/proc":
        return True  # listing /proc is walking the process table
    if not text.startswith("/proc/"):
        return False
    component = text[6:].partition("/")[0]
    # /proc/<our own pid> is /proc/self by number: it cannot be recycled while we run.
    return component.isdigit() and component.isascii() and int(component) != os.getpid()


def _describe(event: str, args: tuple[object, ...]) -> str:
    shown = ", ".join(reprlib.repr(arg) for arg in args[:2] if arg is not None)
    return f"{event}({shown})"


def _hook(event: str, args: tuple[object, ...]) -> None:
    # Called for every audit event in the process (every open, import, compile...): the
    # common case must cost one set lookup.
    if event not in _watched:
        return
    if event in _PATH_EVENTS and not (args and _names_other_process(args[0])):
        return
    if _called_from_tether(sys._getframe(1)):
        return
    raise DoctrineViolation(event, _describe(event, args), _REPLACEMENTS[event])


def enforce(*, allow: Iterable[str] = ()) -> None:
    """Forbid, for the rest of this process's life, the never-use primitives outside tether.

    After this returns, ``os.fork``, ``os.forkpty``, ``os.posix_spawn``, ``os.system``,
    ``os.exec*``, ``subprocess.Popen`` (and so ``run``/``call``/``os.popen``), ``os.kill``,
    ``os.killpg``, ``signal.pthread_kill``, and opening or listing ``/proc`` or another
    process's ``/proc/<pid>`` raise `DoctrineViolation` before they act, when called from
    outside the tether package.  `allow` names audit events to permit (e.g.
    ``allow=["os.exec"]`` for a program that re-executes itself); an unknown name raises
    `ValueError`.

    Guarantee: the check runs before the primitive, so a refused fork or kill never happens.
    The hook cannot be removed or changed: a second call with the same `allow` does nothing,
    and one with a different `allow` raises `RuntimeError` (it can neither widen nor narrow).
    """
    global _installed_allow, _watched
    allowed = frozenset(allow)
    unknown = sorted(allowed - _REPLACEMENTS.keys())
    if unknown:
        raise ValueError(
            f"tether.enforce(allow=...): unknown event(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_REPLACEMENTS))}"
        )
    with _lock:
        if _installed_allow is not None:
            if allowed != _installed_allow:
                raise RuntimeError(
                    f"tether.enforce() is already active with allow={sorted(_installed_allow)}; "
                    "an audit hook cannot be changed or removed"
                )
            return
        _watched = frozenset(_REPLACEMENTS.keys() - allowed)
        sys.addaudithook(_hook)
        _installed_allow = allowed
