"""run() and check_output(): subprocess.run's contract, minus its two hangs.

The one rule this module owns: ``run`` returns when the *tree* has ended, not when every
holder of a pipe has let go. subprocess.run waits for EOF on stdout/stderr, so a background
grandchild that keeps a pipe open makes it block (or raise a false TimeoutExpired); here the
guard reports the end of the tree, the pipes are drained of what is already in them, and a
timeout ends the whole tree (SIGTERM, then SIGKILL after ``grace``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether._kernel.deadline import check_timeout
from tether._kernel.errors import Unsupported
from tether._kernel.limits import Limits
from tether._kernel.spec import SUBPROCESS_PIPE, StrOrBytesPath
from tether._tree.child import Child, output_after_end, spawn
from tether._tree.modes import Contain, Mode, resolve_mode

if TYPE_CHECKING:  # subprocess is imported where it is used: `tether run` never needs it
    import subprocess

    from tether._kernel.errors import TimeoutExpired

__all__ = ["DEFAULT_GRACE", "check_output", "end_tree", "run"]

DEFAULT_GRACE = 1.0


def end_tree(child: Child, grace: float | None) -> None:
    """SIGTERM the whole tree, then SIGKILL whatever is left after ``grace`` seconds
    (None: wait for the SIGTERM to work, however long)."""
    from tether._kernel.errors import TimeoutExpired  # (its import costs start-up)

    child.terminate()
    try:
        child.wait(grace)
    except TimeoutExpired:
        child.kill()
        child.wait()


def prepare_run(
    *,
    timeout: float | None,
    grace: float | None,
    input: bytes | str | None,
    capture_output: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    text: bool,
    encoding: str | None,
    errors: str | None,
    universal_newlines: bool | None,
    contain: Contain,
    cgroup_root: str | os.PathLike[str] | None,
) -> tuple[float | None, float | None, Any, Any, Any, bool, Mode | None]:
    """Check run()'s arguments (as subprocess.run does) before anything starts; returns
    (timeout, grace, stdin, stdout, stderr, text, mode) normalised, ``mode`` being what
    ``contain`` resolves to here (so the spawn resolves no "auto" again). Shared with
    tether.aio.run."""
    timeout = check_timeout(timeout)
    grace = check_timeout(grace)  # None (inf): SIGTERM only, never SIGKILL
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        stdin = SUBPROCESS_PIPE
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        stdout = stderr = SUBPROCESS_PIPE
    if universal_newlines is not None:
        text = text or bool(universal_newlines)
    if input is not None:
        textual = text or encoding is not None or errors is not None
        if isinstance(input, str) and not textual:
            raise TypeError("input must be bytes, not str (or pass text=True)")
        if not isinstance(input, str) and textual:
            raise TypeError("input must be str in text mode, not bytes")
    mode = resolve_mode(contain, cgroup_root)  # a ValueError for an unknown one, first
    return timeout, grace, stdin, stdout, stderr, text, mode


def run(
    argv: Sequence[StrOrBytesPath],
    *,
    timeout: float | None = None,
    input: bytes | str | None = None,
    capture_output: bool = False,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    check: bool = False,
    text: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    universal_newlines: bool | None = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    pass_fds: Iterable[int] = (),
    contain: Contain = "auto",
    grace: float | None = DEFAULT_GRACE,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` to completion under a guard, like :func:`subprocess.run`.

    Differences from subprocess, each deliberate: a ``timeout`` ends the whole tree (SIGTERM,
    then SIGKILL after ``grace`` seconds; ``grace=None`` never escalates) and returns within
    timeout + grace (+ a few ms) even when grandchildren hold the pipes, raising
    :class:`tether.TimeoutExpired` with the output captured so far; a program that exits
    while a background grandchild still holds stdout returns when the program exits (the
    guard ends the rest of the tree, unless ``wait_tree``). ``check=True`` raises
    :class:`subprocess.CalledProcessError`.

    Guarantee: when run() returns or raises, no process of the tree is left (within what the
    containment mode reaches; see the README).
    """
    import subprocess

    from tether._kernel.errors import TimeoutExpired

    timeout, grace_s, stdin, stdout, stderr, text, mode = prepare_run(
        timeout=timeout, grace=grace, input=input, capture_output=capture_output,
        stdin=stdin, stdout=stdout, stderr=stderr, text=text, encoding=encoding,
        errors=errors, universal_newlines=universal_newlines, contain=contain,
        cgroup_root=cgroup_root,
    )
    child = spawn(
        argv, contain=mode, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        pass_fds=pass_fds, text=text, encoding=encoding, errors=errors,
        wait_tree=wait_tree, cgroup_root=cgroup_root, limits=limits,
    )
    piped = child.stdin is not None or child.stdout is not None or child.stderr is not None
    with child:
        try:
            if piped:
                out, err = child.communicate(input, timeout)
            else:  # nothing to pump: a wait, without communicate's set-up
                out = err = None
                child.wait(timeout)
        except TimeoutExpired:
            child._end_by("timeout")
            end_tree(child, grace_s)
            # The tree is gone: collect what it wrote before it died, as bytes (like
            # subprocess: partial output may end inside a multi-byte character).
            out, err = output_after_end(child)
            assert timeout is not None
            # (Built by a helper: an exception held in this frame's locals would form a cycle
            # with its traceback, keeping `child` and its pidfd open until the cyclic GC.)
            raise _timed_out(child, timeout, out, err) from None
        except BaseException:
            child.kill()
            raise
        retcode = child.wait()
    if check and retcode:
        raise subprocess.CalledProcessError(retcode, child.args, output=out, stderr=err)
    return completed(child, retcode, out, err)


def _timed_out(child: Child, timeout: float, out: Any, err: Any) -> TimeoutExpired:
    from tether._kernel.errors import TimeoutExpired

    expired = TimeoutExpired(child.args, timeout, output=out, stderr=err)
    expired.exit = child.exit
    return expired


def completed(child: Child, retcode: int, out: Any, err: Any) -> subprocess.CompletedProcess[Any]:
    """The CompletedProcess of an ended tree; with limits, its final ``usage`` and ``exit``
    ride along as attributes (None without)."""
    import subprocess

    result = subprocess.CompletedProcess(child.args, retcode, out, err)
    result.exit = child.exit  # type: ignore[attr-defined]
    try:
        result.usage = child.usage()  # type: ignore[attr-defined]
    except Unsupported:
        result.usage = None  # type: ignore[attr-defined]
    return result


def check_output(argv: Sequence[StrOrBytesPath], **kwargs: Any) -> Any:
    """Like :func:`subprocess.check_output`: run with stdout captured and check=True."""
    if "stdout" in kwargs:
        raise ValueError("stdout argument not allowed, it will be overridden.")
    if "check" in kwargs:
        raise ValueError("check argument not allowed, it is always on.")
    return run(argv, stdout=SUBPROCESS_PIPE, check=True, **kwargs).stdout
