"""tether.patching: the stdlib's subprocess and asyncio entry points, through tether, process-wide.

For code you cannot edit (a third-party library that calls ``subprocess.run`` or
``asyncio.create_subprocess_exec``): after :func:`patch`, every process it starts runs in a
contained tree (``contain="auto"``), exactly as if it had imported :mod:`tether.subprocess`
and :mod:`tether.aio` itself.

The one rule this module owns: a patch replaces module attributes only, and
:func:`unpatch` puts back the very objects it found, or refuses. What it replaces:

* ``subprocess.Popen`` -> :class:`tether.subprocess.Popen`. The stdlib's ``run``, ``call``,
  ``check_call``, ``check_output``, ``getoutput``, ``getstatusoutput`` (and ``os.popen``) look
  ``Popen`` up in the module when called, so they all go through tether.
* ``asyncio.create_subprocess_exec``/``_shell`` (and ``asyncio.subprocess``'s) ->
  :mod:`tether.aio`'s.
* ``asyncio.BaseEventLoop.subprocess_exec``/``_shell`` (the protocol-level API) refuse with
  :class:`tether.Unsupported`: asyncio's transport waits for its process with a child watcher
  (``waitpid(pid)``), which a program in a tether tree (the guard's child) cannot satisfy,
  and starting it uncontained would be the silent degradation tether never does.

A name bound before the patch (``from subprocess import Popen``) keeps the stdlib's object:
only lookups through the module see tether's.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.subprocess
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, NoReturn

import tether.aio
import tether.subprocess
from tether._kernel.errors import Unsupported

__all__ = ["PatchConflict", "is_patched", "patch", "patched", "unpatch"]


class PatchConflict(RuntimeError):
    """An entry point is not the object tether expects there (another library replaced it,
    or replaced tether's while patched): patching or restoring it would not be exact."""


async def _refused_protocol_api(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise Unsupported(
        "loop.subprocess_exec/subprocess_shell under tether.patch(): asyncio's subprocess "
        "transport waits with a child watcher (waitpid), and a contained program is the "
        "guard's child; use asyncio.create_subprocess_exec/_shell (tether's while patched)")


_LOOP: Final = asyncio.base_events.BaseEventLoop
_STDLIB_POPEN: Final[Any] = tether.subprocess.Popen.__mro__[1]
# asyncio's own, kept to be put back; never called here.
_EXEC: Final = asyncio.subprocess.create_subprocess_exec  # noqa: TET106  restored, not called
_SHELL: Final = asyncio.subprocess.create_subprocess_shell  # noqa: TET106  restored, not called
# (owner, attribute, the stdlib's object, tether's replacement)
_TARGETS: Final[tuple[tuple[Any, str, Any, Any], ...]] = (
    (subprocess, "Popen", _STDLIB_POPEN, tether.subprocess.Popen),
    (asyncio, "create_subprocess_exec", _EXEC, tether.aio.create_subprocess_exec),
    (asyncio, "create_subprocess_shell", _SHELL, tether.aio.create_subprocess_shell),
    (asyncio.subprocess, "create_subprocess_exec", _EXEC, tether.aio.create_subprocess_exec),
    (asyncio.subprocess, "create_subprocess_shell", _SHELL, tether.aio.create_subprocess_shell),
    (_LOOP, "subprocess_exec", _LOOP.__dict__["subprocess_exec"], _refused_protocol_api),
    (_LOOP, "subprocess_shell", _LOOP.__dict__["subprocess_shell"], _refused_protocol_api),
)

_lock = threading.Lock()
_depth = 0


def _where(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


def _check(expect_patched: bool) -> None:
    """Every target holds what it must (the stdlib's, or tether's), or PatchConflict."""
    if _STDLIB_POPEN.__init__.__globals__ is not vars(subprocess):
        # Replaced before tether.subprocess was imported: tether's Popen extends that one.
        raise PatchConflict(
            f"subprocess.Popen was {_STDLIB_POPEN!r}, not the stdlib's, when tether.subprocess "
            "was imported: something else replaced it, so tether cannot stand in for it exactly")
    for owner, name, original, ours in _TARGETS:
        found = owner.__dict__.get(name)
        want = ours if expect_patched else original
        if found is not want:
            state = "tether's" if expect_patched else "the stdlib's"
            raise PatchConflict(
                f"{_where(owner, name)} is {found!r}, not {state} {want!r}: something else "
                "replaced it, so tether cannot " + ("restore it exactly" if expect_patched
                                                   else "stand in for it exactly"))


def patch() -> None:
    """Route the stdlib's ``subprocess`` and ``asyncio.create_subprocess_*`` through tether
    for the whole process (see the module's docstring for exactly what is replaced).

    Nestable: each call needs one :func:`unpatch`; the first patches, the last restores.
    Thread-safe. Raises :class:`PatchConflict`, replacing nothing, if an entry point is not
    the stdlib's. Guarantee: every process started through a patched entry point is in a
    contained tree that cannot outlive this process."""
    global _depth
    with _lock:
        if _depth == 0:
            _check(expect_patched=False)
            for owner, name, _original, ours in _TARGETS:
                setattr(owner, name, ours)
        _depth += 1


def unpatch() -> None:
    """Undo one :func:`patch`; the last one puts back the very objects it replaced.

    Raises RuntimeError without a matching patch, and :class:`PatchConflict`, restoring
    nothing, if one of tether's replacements has itself been replaced meanwhile."""
    global _depth
    with _lock:
        if _depth == 0:
            raise RuntimeError("tether.unpatch() without a matching tether.patch()")
        if _depth == 1:
            _check(expect_patched=True)
            for owner, name, original, _ours in _TARGETS:
                setattr(owner, name, original)
        _depth -= 1


def is_patched() -> bool:
    """Whether :func:`patch` is in effect."""
    return _depth > 0


@contextmanager
def patched() -> Iterator[None]:
    """``with tether.patched():`` -- :func:`patch` for the block, :func:`unpatch` after it."""
    patch()
    try:
        yield
    finally:
        unpatch()
