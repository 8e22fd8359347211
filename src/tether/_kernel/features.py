"""What this kernel and sandbox offer, probed once and cached.

The one rule this module owns: a capability answer is cached only when the kernel gave a
definite answer (success, or ENOSYS/EPERM/EINVAL meaning "not here"); a transient failure
(EAGAIN, ENOMEM, EMFILE) is raised and never poisons the cache.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Final

from tether._kernel import core as _core

__all__ = ["clone_method", "clone_unsupported_reason", "force_clone_method", "kernel_release"]

CLONE_METHOD_NAMES: Final = {
    _core.CLONE_CLONE3: "clone3",
    _core.CLONE_LEGACY: "clone (legacy, CLONE_PIDFD)",
    _core.CLONE_NONE: "none",
}

_lock = threading.Lock()
_method: int | None = None
_clone3_errno = 0
_legacy_errno = 0


def clone_method() -> int:
    """The clone method spawns use: _core.CLONE_CLONE3, CLONE_LEGACY or CLONE_NONE."""
    global _method, _clone3_errno, _legacy_errno
    method = _method
    if method is not None:
        return method
    with _lock:
        if _method is None:
            _method, _clone3_errno, _legacy_errno = _core.clone_method()
        return _method


def clone_unsupported_reason() -> str:
    def why(err: int) -> str:
        return errno.errorcode.get(err, str(err)) if err else "not tried"

    return (
        "no pidfd-returning clone here: clone3 with CLONE_PIDFD|CLONE_CLEAR_SIGHAND "
        f"(Linux 5.5) failed with {why(_clone3_errno)}, and clone with CLONE_PIDFD "
        f"(Linux 5.2) failed with {why(_legacy_errno)}"
    )


def force_clone_method(method: int | None) -> None:
    """Test hook: force a clone method (e.g. the legacy fallback), or None to re-probe."""
    global _method
    with _lock:
        _core.force_clone_method(0 if method is None else method)
        _method = method


def kernel_release() -> tuple[int, int]:
    """(major, minor) of the running kernel."""
    release = os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)
