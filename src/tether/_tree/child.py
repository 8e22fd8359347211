"""spawn() and Child: a Popen-like handle on a guarded, contained process tree.

The one rule this module owns: a Child speaks for its whole tree. ``wait()`` returns when the
tree has ended per the policy (by default the program exited and the guard ended the rest),
``terminate()``/``kill()``/``signal_tree()`` reach every member, and leaving a ``with``
block, or dropping the last reference, ends the tree. ``returncode`` is exactly what
subprocess would report for the program.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

from tether._kernel.deadline import Deadline, check_timeout
from tether._kernel.limits import Limits
from tether._kernel.pidfd import NoPublicConstructor
from tether._kernel.spec import SpawnSpec, StrOrBytesPath
from tether._tree.handle import TreeHandle, describe, start_tree
from tether._tree.modes import Contain, Mode, resolve_mode
from tether._tree.pipes import BINARY, PipeSet, TextMode
from tether._tree.seam import Tree

__all__ = ["Child", "output_after_end", "spawn", "start_child"]


@final
class Child(TreeHandle, metaclass=NoPublicConstructor):
    """A running program and the tree it starts, under a guard (see :func:`spawn`).

    Attributes are those of :class:`subprocess.Popen`: ``args``, ``pid`` (the program's, not
    the guard's), ``returncode``, ``stdin``, ``stdout``, ``stderr``; plus ``pidfd`` (the
    program's :class:`Pidfd`), ``exit`` (a :class:`tether.Exit` once ended) and ``contain``.

    Guarantee: the tree cannot outlive this process: when it dies, however it dies, the
    guard sees its lifeline close and kills the tree (every process of it in cgroup and pidns
    modes; the program's process group in group mode).
    """

    __slots__ = ("__weakref__", "_pipes", "stderr", "stdin", "stdout")

    def __init__(self, args: Any, tree: Tree, contain: Mode | None, pipes: PipeSet) -> None:
        super().__init__(args, tree, contain)
        self._pipes = pipes
        self.stdin, self.stdout, self.stderr = pipes.stdin, pipes.stdout, pipes.stderr

    def __repr__(self) -> str:
        return f"<tether.Child {describe(self)}>"

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the tree has ended; return the program's returncode.

        Raises :class:`tether.TimeoutExpired` (a subprocess.TimeoutExpired) on timeout."""
        timeout = check_timeout(timeout)
        if self.returncode is not None:
            return self.returncode
        tree = self._tree
        if not tree.wait(timeout):
            assert timeout is not None
            from tether._kernel.errors import TimeoutExpired  # (its import costs start-up)

            raise TimeoutExpired(self.args, timeout)
        if tree.start_error is not None:
            # Started without waiting for the exec: the program never ran.
            raise tree.start_error
        rc = self._settle()
        assert rc is not None
        return rc

    def communicate(
        self, input: bytes | str | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        """Send ``input``, read stdout/stderr until the tree has ended, return (out, err).

        Unlike subprocess, it returns when the tree has ended even if an escaped process still
        holds a pipe open (what is already in the pipes is read). On timeout it raises
        :class:`tether.TimeoutExpired` carrying the output so far; call it again to go on.
        """
        from tether._kernel.errors import TimeoutExpired  # (its import costs start-up)

        timeout = check_timeout(timeout)
        tree = self._tree  # (in a forked child: raises before the pipes are touched)
        pipes = self._pipes
        data = pipes.mode.encode_input(input, self.stdin is not None)
        deadline = Deadline.after(timeout)
        pipes.flush_stdin()
        try:
            if not pipes.pump(tree, data, deadline):
                raise TimeoutExpired(self.args, timeout or 0.0)
            self.wait(deadline.remaining())
        except TimeoutExpired:
            out, err = pipes.collected(final=False, decode=False)
            raise TimeoutExpired(self.args, timeout or 0.0, output=out, stderr=err) from None
        return pipes.collected(final=True)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill and reap the whole tree, and close the pipes."""
        tree = self._tree  # (in a forked child: raises, and the tree is left alone)
        try:
            self._pipes.close_stdin()
        finally:
            try:
                try:
                    self._end_by("tether")
                except ValueError:
                    pass  # the user closed the pidfd: the end is abandon()'s to make
                tree.abandon()
                self._settle()
            except ChildProcessError:
                pass  # the guard died; the tree was ended parent-side (see Guard)
            finally:
                self._pipes.close()


def output_after_end(child: Child) -> tuple[Any, Any]:
    """Once ``child``'s tree has ended: everything its pipes gave, as bytes, pipes closed
    (run()'s partial output after a timeout: it may end inside a multi-byte character)."""
    pipes = child._pipes
    pipes.pump(child._tree, b"", Deadline(None))
    return pipes.collected(final=True, decode=False)


def start_child(
    spec: SpawnSpec,
    mode: Mode | None,
    *,
    text_mode: TextMode = BINARY,
    bufsize: int = -1,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    foreground: bool = False,
    job_control: bool = False,
    await_start: bool = True,
) -> Child:
    """Start a checked ``spec`` contained by a resolved ``mode``: :func:`spawn` after its
    checks, and the CLI's way in. Knobs users do not need: ``foreground`` (the guard
    hands the terminal to the program's group and takes it back), ``job_control`` (the
    guard reports the program's stops, counted in ``Child.stops``, and leaves continuing it
    to us: `tether run` on a terminal) and ``await_start`` (False: return once the guard
    runs; a start failure is raised by wait())."""
    tree, ends = start_tree(spec, mode, wait_tree=wait_tree, cgroup_root=cgroup_root,
                            foreground=foreground, job_control=job_control,
                            await_start=await_start)
    files = tuple(text_mode.wrap(fd, i, bufsize) for i, fd in enumerate(ends))
    pipes = PipeSet((files[0], files[1], files[2]), text_mode)
    return Child._create(spec.args, tree, mode, pipes)


def spawn(
    argv: Sequence[StrOrBytesPath],
    *,
    contain: Contain = "auto",
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    cwd: StrOrBytesPath | None = None,
    pass_fds: Iterable[int] = (),
    text: bool = False,
    encoding: str | None = None,
    errors: str | None = None,
    universal_newlines: bool | None = None,
    bufsize: int | None = -1,
    wait_tree: bool = False,
    cgroup_root: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
) -> Child:
    """Start ``argv`` under a guard, contained, and return a Popen-like :class:`Child`.

    ``contain`` is "auto" (default: the strongest mode available here; the README's
    "Guarantees, per containment mode" gives the order), "group" (the program's process
    group), "cgroup" (a fresh cgroup v2; catches daemons that setsid), "pidns" (the guard is
    PID 1 of a new PID namespace; catches everything) or None (no guard: a bare lifelined
    child, for programs that call :func:`tether.attach`). A mode that is not
    available raises :class:`tether.Unsupported` and starts nothing.

    stdin/stdout/stderr take None, PIPE, DEVNULL, an fd or a file object (and STDOUT for
    stderr); ``text``/``encoding``/``errors`` as in subprocess. With ``wait_tree`` the guard
    waits for every descendant after the program exits instead of ending them. ``limits``
    (a :class:`tether.Limits`) bounds the whole tree's memory, CPU and process count, in
    its own cgroups (cgroup and pidns modes; Unsupported elsewhere); ``Child.usage()``.

    Guarantee: nothing in the tree outlives this process (see the README's table for what
    each mode reaches), and the program's pidfd is handed over race-free by the guard.
    Errors (bad input, a program that cannot be run) are raised here, before or instead of
    any tree: FileNotFoundError, PermissionError, ValueError, TypeError, Unsupported.
    """
    # First, as in subprocess.Popen: a bad bufsize must fail before the tree exists.
    if bufsize is None:
        bufsize = -1
    if not isinstance(bufsize, int):
        raise TypeError("bufsize must be an integer")
    if universal_newlines is not None:
        text = text or bool(universal_newlines)
    mode = resolve_mode(contain, cgroup_root)
    text_mode = TextMode(text, encoding, errors)
    if text_mode.text:
        # A bad codec must fail before the tree exists, not after (as subprocess does).
        codecs.lookup(text_mode.encoding_name)
        if errors is not None:
            codecs.lookup_error(errors)
    spec = SpawnSpec.build(
        argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
        pass_fds=pass_fds, popen_style=True, limits=limits,
    )
    return start_child(spec, mode, text_mode=text_mode, bufsize=bufsize, wait_tree=wait_tree,
                       cgroup_root=cgroup_root)
