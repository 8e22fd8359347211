"""Section 6: the guard's peak RSS.

Why not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the guard is created vfork-style
(``CLONE_VM``) from the Python parent, and at execve the kernel records the *old* mm's
high-water RSS in the new process's ``maxrss`` (``exec_mmap`` -> ``setmax_mm_hiwater_rss``),
so every child of a Python process reports at least the interpreter's RSS. This section still
shows that number (one row) so the effect is visible, but measures the guard alone instead:

Each sample is a fresh interpreter that starts one tree, ``sh -c 'sleep 0.3 & exit 0'`` under
``tether.spawn(..., wait_tree=True)``: the program exits at once, so the guard has run its
start-up, the program's exit handling and reaping, and is now waiting for the rest of the tree.
Then the worker reads the guard's ``VmHWM`` (peak RSS of the guard's own address space since
its execve) from ``/proc/<guard>/status``, and waits for the tree to end.
"""

from __future__ import annotations

import resource
import subprocess
import time

from _common import JSONDict, log, run_worker, worker_main

CASES = {
    "group": "group",
    "cgroup": "cgroup",
    "pidns": "pidns",
    "ru_maxrss": "group",
}
LABELS = {
    "group": "guard VmHWM, contain='group'",
    "cgroup": "guard VmHWM, contain='cgroup'",
    "pidns": "guard VmHWM, contain='pidns'",
    "ru_maxrss": "ru_maxrss(RUSAGE_CHILDREN) after spawn(['true']) (the parent's RSS, see text)",
}


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    # The guard is our own child, unreaped (its tree is still sleeping), so the number is its
    # own while we read. VmHWM has no pidfd equivalent.
    with open(f"/proc/{pid}/status", encoding="ascii") as f:  # noqa: TET601  see above
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def one(params: JSONDict) -> JSONDict:
    """In the fresh worker: one tree, and the guard's memory while it waits."""
    import tether

    case = params["case"]
    mode = CASES[case]
    try:
        if case == "ru_maxrss":
            tether.spawn(["/bin/true"], contain=mode).wait()
            return {"kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
        child = tether.spawn(["/bin/sh", "-c", "sleep 0.3 & exit 0"], contain=mode,
                             wait_tree=True, stdout=subprocess.DEVNULL)
    except tether.Unsupported as exc:
        return {"unsupported": str(exc)}
    with child:
        time.sleep(0.15)
        guard_pid = child._tree.spawned.pid
        st = _status(guard_pid)
        child.wait()
    return {"kib": st["VmHWM"], "status": st}


def run(params: JSONDict) -> JSONDict:
    """In run.py's process: ``repeats`` fresh workers per case, interleaved."""
    quick = bool(params.get("quick"))
    repeats = int(params.get("repeats", 1 if quick else 7))
    t0 = time.monotonic()
    samples: dict[str, list[float]] = {c: [] for c in CASES}
    detail: dict[str, list[dict[str, int]]] = {c: [] for c in CASES}
    unavailable: dict[str, str] = {}
    for r in range(repeats):
        for case in CASES:
            if case in unavailable:
                continue
            res = run_worker("_guardrss.py", {"case": case}, timeout=120)
            if "unsupported" in res:
                unavailable[case] = res["unsupported"]
                continue
            samples[case].append(float(res["kib"]))
            if "status" in res:
                detail[case].append(res["status"])
        log(f"guard RSS: round {r + 1}/{repeats}")
    return {"labels": LABELS, "samples_kib": samples, "status": detail,
            "unavailable": unavailable, **_guard_binary(), "seconds": time.monotonic() - t0}


def _guard_binary() -> JSONDict:
    """The size of the guard executable these samples ran (issue 13: <= 64 KiB), and its
    build (libc-free, musl, glibc)."""
    import os

    from tether._kernel.guard_build import guard_build
    from tether._tree.modes import guard_path

    path = guard_path()
    return {"guard_bytes": os.path.getsize(path), "guard_build": guard_build(path)}


if __name__ == "__main__":
    worker_main(one)
