"""What this kernel and sandbox offer, probed once and cached.

The one rule this module owns: a capability answer is cached only when the kernel gave a
definite answer (success, or ENOSYS/EPERM/EINVAL meaning "not here"); a transient failure
(EAGAIN, ENOMEM, EMFILE) is raised and never poisons the cache.
"""

from __future__ import annotations

import errno
from typing import Final

from tether._kernel import core as _core

__all__ = [
    "clone_method", "clone_unsupported_reason", "fd_table_shared", "force_clone_method",
    "force_fd_table_copy", "force_overlapped_start", "overlapped_start",
]

CLONE_METHOD_NAMES: Final = {
    _core.CLONE_CLONE3: "clone3",
    _core.CLONE_LEGACY: "clone (legacy, CLONE_PIDFD)",
    _core.CLONE_NONE: "none",
}

# The clone method is cached in one place, the extension (core.c, under its own lock): the
# spawn path and the test hook below share that cache, and a cached answer costs one C call
# without the GIL being dropped, so this module keeps no copy that could disagree with it.


def clone_method() -> int:
    """The clone method spawns use: _core.CLONE_CLONE3, CLONE_LEGACY or CLONE_NONE."""
    return _core.clone_method()[0]


def clone_unsupported_reason() -> str:
    def why(err: int) -> str:
        return errno.errorcode.get(err, str(err)) if err else "not tried"

    _, clone3_errno, legacy_errno = _core.clone_method()
    return (
        "no pidfd-returning clone here: clone3 with CLONE_PIDFD|CLONE_CLEAR_SIGHAND "
        f"(Linux 5.5) failed with {why(clone3_errno)}, and clone with CLONE_PIDFD "
        f"(Linux 5.2) failed with {why(legacy_errno)}"
    )


def force_clone_method(method: int | None) -> None:
    """Test hook: force a clone method (e.g. the legacy fallback), or None to re-probe. The
    guard follows a forced legacy method too (Guard.launch passes it ``--clone legacy``)."""
    _core.force_clone_method(0 if method is None else method)


def fd_table_shared() -> tuple[bool, int]:
    """Whether clones share the fd table and their children unshare only their low fds
    (CLONE_FILES + CLOSE_RANGE_UNSHARE, Linux 5.9; ``fd_table.c``), or copy it whole: (shared,
    the errno that said no). Probed once, by a child, with the clone method spawns use; the
    extension holds the one cache (``tether_fd_sharing``)."""
    return _core.fd_table_sharing(clone_method())


def force_fd_table_copy(copy: bool) -> None:
    """Test hook: make every clone copy the fd table (the fallback), or (False) probe again."""
    _core.force_fd_table_sharing(False if copy else None)


# The overlapped start (launch_early.c) needs nothing the clone probe has not shown: it is on
# unless a test turns it off, to run the guard's own start of the program.
_overlapped = [True]


def overlapped_start() -> bool:
    """Whether a guarded start clones the program before the guard's exec (the guard adopts
    it, ``--adopt``) rather than leaving the program's start to the guard."""
    return _overlapped[0]


def force_overlapped_start(on: bool) -> None:
    """Test hook: the overlapped start on (the default) or off (the guard starts the program
    itself, as it does for limited trees, preexec_fn and the terminal's foreground)."""
    _overlapped[0] = on
