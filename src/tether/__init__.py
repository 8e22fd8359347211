"""tether: race-free, orphan-free process management for Linux.

Processes are named only by pidfds obtained atomically at creation; every child holds a
lifeline whose EOF means "parent gone"; trees are contained (process group, cgroup v2 or PID
namespace) under a guard so nothing outlives its parent. See the README for the guarantees
table.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs re, enum and more; mypy treats any
# constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from subprocess import DEVNULL, PIPE, STDOUT

    from tether import aio
    from tether._enforce import DoctrineViolation, enforce
    from tether._kernel.errors import TimeoutExpired, Unsupported
    from tether._kernel.exit import Exit
    from tether._kernel.fork import run_in_fork
    from tether._kernel.lifeline import LifelineWriter, attach
    from tether._kernel.limits import Limits, Usage
    from tether._kernel.pidfd import Pidfd, PidfdInfo
    from tether._kernel.signalfd import SignalFd, SignalInfo
    from tether._kernel.spawn import Spawned, spawn_lifelined
    from tether._tree.child import Child, spawn
    from tether._tree.run import check_output, run
    from tether.patching import PatchConflict, patch, patched, unpatch

__version__ = "0.1.0"

# Every public name is imported on first use (PEP 562), so `import tether` costs almost
# nothing: a CLI start, a program that only calls attach(), or one that never spawns does not
# pay for subprocess, dataclasses, inspect, enum, asyncio... (tests/test_import_cost.py).
# Where each name lives; the TYPE_CHECKING block above says the same to type checkers.
_LAZY = {
    "DEVNULL": "subprocess", "PIPE": "subprocess", "STDOUT": "subprocess",
    "DoctrineViolation": "tether._enforce", "enforce": "tether._enforce",
    "TimeoutExpired": "tether._kernel.errors", "Unsupported": "tether._kernel.errors",
    "Exit": "tether._kernel.exit",
    "run_in_fork": "tether._kernel.fork",
    "LifelineWriter": "tether._kernel.lifeline", "attach": "tether._kernel.lifeline",
    "Limits": "tether._kernel.limits", "Usage": "tether._kernel.limits",
    "Pidfd": "tether._kernel.pidfd", "PidfdInfo": "tether._kernel.pidfd",
    "SignalFd": "tether._kernel.signalfd", "SignalInfo": "tether._kernel.signalfd",
    "Spawned": "tether._kernel.spawn", "spawn_lifelined": "tether._kernel.spawn",
    "Child": "tether._tree.child", "spawn": "tether._tree.child",
    "check_output": "tether._tree.run", "run": "tether._tree.run",
    "PatchConflict": "tether.patching", "patch": "tether.patching",
    "patched": "tether.patching", "unpatch": "tether.patching",
}


def __getattr__(name: str) -> object:
    if name in ("aio", "subprocess"):  # (asyncio, and the drop-in, only when asked for)
        value: object = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Child",
    "DoctrineViolation",
    "Exit",
    "LifelineWriter",
    "Limits",
    "PatchConflict",
    "Pidfd",
    "PidfdInfo",
    "SignalFd",
    "SignalInfo",
    "Spawned",
    "TimeoutExpired",
    "Unsupported",
    "Usage",
    "aio",
    "attach",
    "check_output",
    "enforce",
    "patch",
    "patched",
    "run",
    "run_in_fork",
    "spawn",
    "spawn_lifelined",
    "subprocess",
    "unpatch",
]
