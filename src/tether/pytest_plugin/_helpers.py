"""Process-lifetime helpers: processes that the standard library starts once and keeps for
the rest of the interpreter's life, on behalf of whichever test first needed them.

The one rule this module owns: a helper is recognised by the handle its owner keeps (never by
its command line), and only while that owner has it: multiprocessing's forkserver
(``forkserver`` start method) and its resource tracker (``spawn`` and ``forkserver``). Both
are pytest's own children that multiprocessing itself will ``waitpid`` for, so the leak check
never counts, kills or reaps them.
"""

from __future__ import annotations

import sys

__all__ = ["process_lifetime_helpers"]

# (module, singleton, attribute holding the helper's pid); each module is looked up only if
# something already imported it.
_HELPERS = (
    ("multiprocessing.forkserver", "_forkserver", "_forkserver_pid"),
    ("multiprocessing.resource_tracker", "_resource_tracker", "_pid"),
)


def process_lifetime_helpers() -> list[int]:
    """The pids of the helpers running now (pytest's children, as their owners know them)."""
    pids: list[int] = []
    for module_name, singleton, attribute in _HELPERS:
        owner = getattr(sys.modules.get(module_name), singleton, None)
        pid = getattr(owner, attribute, None)
        if isinstance(pid, int) and pid > 0:
            pids.append(pid)
    return pids
