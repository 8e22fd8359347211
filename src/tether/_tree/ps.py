"""``tether ps``: the live trees tether contains on this machine, read from the cgroup tree.

The one rule this module owns: what is listed, and whether it is alive, comes from cgroup
files only -- every ``t-*`` directory below ``<cgroup v2 root>/tether`` (nested ones
included: trees started inside a tree or a pytest plugin test) whose ``cgroup.events`` says
``populated 1``; no /proc walk. Which program and when are the tree's record
(``tree_record``, xattrs on the same directory), by whom is the directory's owner, the
figures are its cgroup files (v2 ``cpu.stat``; memory and pids from its v1 directories on
hybrid hosts, or v2 where the controllers are). Yours only, or everyone's as root. A tree
without a cgroup v2 directory of its own (group mode; pidns mode unless its limits put it in
a v2 one) is not in the cgroup tree and cannot be listed; the output says so.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from typing import Any, Final

from tether._kernel import cgroup
from tether._kernel.cgroup import PARENT_NAME, TREE_PREFIX
from tether._kernel.limits import format_bytes
from tether._kernel.tree_record import read_record

__all__ = ["UNLISTED", "live_trees", "ps"]

UNLISTED: Final = ("trees without a cgroup v2 directory of their own (contain='group', and "
                   "'pidns' unless its limits put it in one) cannot be listed")


def _number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="ascii") as f:
            return {k: int(v) for k, v in (line.split() for line in f) if v.isdigit()}
    except (OSError, ValueError):
        return {}


def _tree_dirs(parent: str) -> list[str]:
    """Every ``t-*`` directory below ``parent``, nested ones too (top down)."""
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(parent):
        found += [os.path.join(dirpath, n) for n in dirnames if n.startswith(TREE_PREFIX)]
    return found


def _describe(path: str, now: float) -> dict[str, Any]:
    record = read_record(path)
    uid = os.stat(path).st_uid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    cpu = _keyed(os.path.join(path, "cpu.stat")).get("usage_usec")
    memory = _number(os.path.join(path, "memory.current"))
    peak = _number(os.path.join(path, "memory.peak"))
    for directory in record.v1:
        if memory is None and os.path.exists(os.path.join(directory, "memory.usage_in_bytes")):
            memory = _number(os.path.join(directory, "memory.usage_in_bytes"))
            peak = _number(os.path.join(directory, "memory.max_usage_in_bytes"))
    return {
        "cgroup": path,
        "argv": record.argv,
        "user": user,
        "uid": uid,
        "started": record.started,
        "age": None if record.started is None else max(0.0, now - record.started),
        "processes": len(cgroup.members(path)),
        "cpu": None if cpu is None else cpu / 1e6,
        "memory": memory,
        "memory_peak": peak,
        "limits": record.limits,
    }


def live_trees(root: str | None = None) -> list[dict[str, Any]]:
    """The live trees under ``root`` (default: tether's cgroup v2 root), oldest first: the
    caller's own, or everyone's for root."""
    parent = os.path.join(cgroup.cgroup_root(root), PARENT_NAME)
    me, now = os.getuid(), time.time()
    trees = []
    for path in _tree_dirs(parent):
        try:
            if not cgroup.populated(path) or (me != 0 and os.stat(path).st_uid != me):
                continue
            trees.append(_describe(path, now))
        except FileNotFoundError:
            continue  # ended while we looked
    return sorted(trees, key=lambda t: t["started"] or 0.0)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _limits(limits: dict[str, float]) -> str:
    parts = []
    for name, value in limits.items():
        parts.append(f"{name}={format_bytes(int(value))}" if name == "memory"
                     else f"{name}={value:g}")
    return ",".join(parts).replace(" ", "") or "-"


def ps(*, as_json: bool = False, root: str | None = None) -> int:
    """Print the live trees (a table, or JSON); exit status 0."""
    why = cgroup.cgroup_unavailable_reason(root)
    trees = live_trees(root) if why is None else []
    if as_json:
        print(json.dumps({"trees": trees, "unlisted": UNLISTED, "unavailable": why}, indent=2))
        return 0
    if why is not None:
        print(f"tether ps: no cgroup v2 hierarchy tether can use here ({why})")
    rows = [("USER", "STARTED", "AGE", "PROCS", "CPU", "MEM", "PEAK", "LIMITS", "COMMAND")]
    for t in trees:
        started = "-" if t["started"] is None else time.strftime(
            "%H:%M:%S", time.localtime(t["started"]))
        mem = "-" if t["memory"] is None else format_bytes(t["memory"]).replace(" ", "")
        peak = "-" if t["memory_peak"] is None else format_bytes(t["memory_peak"]).replace(
            " ", "")
        cpu = "-" if t["cpu"] is None else f"{t['cpu']:.2f}s"
        command = " ".join(t["argv"]) if t["argv"] is not None else f"? ({t['cgroup']})"
        rows.append((t["user"], started, _age(t["age"]), str(t["processes"]), cpu, mem, peak,
                     _limits(t["limits"]), command))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"({len(trees)} tree{'s' if len(trees) != 1 else ''}; {UNLISTED})")
    return 0
