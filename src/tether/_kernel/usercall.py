"""call_as_user: the frame through which tether calls code it was handed.

The one rule this module owns: a user-supplied callable (``run_in_fork``'s ``fn``) is called
from a frame in this file, and ``tether.enforce()`` never counts this file as tether's own.
So a builtin handed to tether (``run_in_fork(os.kill, ...)``, which has no frame of its own)
is charged to the user, not to tether's call site. It lives in L0 so that L0 needs nothing
from the enforcement layer; the enforcement layer looks it up here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, TypeVar

__all__ = ["USER_CALL_FILE", "call_as_user"]

_T = TypeVar("_T")

#: The file the audit hook must treat as user code.
USER_CALL_FILE: Final = os.path.realpath(__file__)


def call_as_user(fn: Callable[..., _T], /, *args: object, **kwargs: object) -> _T:
    """Call `fn` as user code: a primitive it reaches is judged as if the user had called it."""
    return fn(*args, **kwargs)
