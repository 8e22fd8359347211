"""tether: race-free, orphan-free process management for Linux.

Processes are named only by pidfds obtained atomically at creation; every child holds a
lifeline whose EOF means "parent gone"; trees are contained (process group, cgroup v2 or PID
namespace) under a guard so nothing outlives its parent. See the README for the guarantees
table.
"""

from __future__ import annotations

from subprocess import DEVNULL, PIPE, STDOUT

from tether._enforce import DoctrineViolation, enforce
from tether._kernel.errors import TimeoutExpired, Unsupported
from tether._kernel.exit import Exit
from tether._kernel.fork import run_in_fork
from tether._kernel.lifeline import LifelineWriter, attach
from tether._kernel.pidfd import Pidfd, PidfdInfo
from tether._kernel.signalfd import SignalFd, SignalInfo
from tether._kernel.spawn import Spawned, spawn_lifelined
from tether._tree.child import Child, spawn
from tether._tree.run import check_output, run

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # tether.aio and tether.subprocess on first use, so `import tether` does not import
    # asyncio (nor the drop-in's module).
    if name in ("aio", "subprocess"):
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Child",
    "DoctrineViolation",
    "Exit",
    "LifelineWriter",
    "Pidfd",
    "PidfdInfo",
    "SignalFd",
    "SignalInfo",
    "Spawned",
    "TimeoutExpired",
    "Unsupported",
    "aio",
    "attach",
    "check_output",
    "enforce",
    "run",
    "run_in_fork",
    "spawn",
    "spawn_lifelined",
    "subprocess",
]
