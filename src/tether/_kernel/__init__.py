"""L0, the kernel layer: the only code that touches process syscalls.

The C extension (``core``: clone3/clone with CLONE_PIDFD, the async-signal-safe child), the
guard executable (``guard.c``), and the thin Python over them: pidfds, lifelines, the spawn
spec, cgroup files, signalfd, run_in_fork. Nothing here imports from ``tether._tree`` (L1) or
from the enforcement layer (L2); the import-linter contract in ``pyproject.toml`` checks it.
"""
