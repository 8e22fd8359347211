"""The machine a run came from: CPU, cores, kernel, Python, and what tether can use here."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

from _common import REPO, JSONDict


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _hypervisor() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return " hypervisor" in line
    except OSError:
        pass
    return False


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except (OSError, ValueError):
        pass
    return float("nan")


def _git() -> str:
    try:
        head = subprocess.run(  # noqa: TET102  harness
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(  # noqa: TET102  harness
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def describe() -> JSONDict:
    """Everything the report prints at the top."""
    import tether
    from tether._kernel import features as _features
    from tether._kernel.cgroup import cgroup_unavailable_reason
    from tether._kernel.guard_build import guard_build
    from tether._tree.modes import guard_path, pidns_unavailable_reason

    uname = os.uname()
    try:
        affinity = len(os.sched_getaffinity(0))
    except OSError:
        affinity = os.cpu_count() or 0
    method = _features.CLONE_METHOD_NAMES.get(_features.clone_method(), "?")
    cg = cgroup_unavailable_reason()
    ns = pidns_unavailable_reason()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "virtualized": _hypervisor(),
        "mem_gib": round(_mem_total_gib(), 1),
        "kernel": f"{uname.sysname} {uname.release} {uname.machine}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libc": " ".join(platform.libc_ver()),
        "tether": f"{tether.__version__} (git {_git()})",
        "clone": method,
        # Which guard every guarded number below was measured with (README numbers are the
        # default build's: libc-free on x86_64/aarch64).
        "guard": f"{guard_build(guard_path())}, {os.path.getsize(guard_path()) // 1024} KiB",
        "cgroup": "available" if cg is None else f"unavailable: {cg}",
        "pidns": "available" if ns is None else f"unavailable: {ns}",
        "uid": os.geteuid(),
        "loadavg_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
    }


def lines(m: JSONDict) -> list[str]:
    virt = ", virtualized" if m.get("virtualized") else ""
    usable = m.get("cores_usable")
    cores = f"{m['cores']} cores" + (f" ({usable} usable)" if usable != m["cores"] else "")
    load = " ".join(f"{x:.2f}" for x in m.get("loadavg_start", []))
    out = [
        f"CPU:     {m['cpu']}, {cores}{virt}, {m['mem_gib']} GiB RAM",
        f"Kernel:  {m['kernel']}",
        f"Python:  {m['python']}, {m['libc']}",
        f"tether:  {m['tether']}, clone: {m['clone']}",
        f"Guard:   {m.get('guard', 'build not recorded')}",
        f"Modes:   cgroup {m['cgroup']}; pidns {m['pidns']}",
        f"Run:     {m['date']}, uid {m['uid']}, load average at start {load}",
    ]
    if "loadavg_end" in m:
        out[-1] += ", at end " + " ".join(f"{x:.2f}" for x in m["loadavg_end"])
    # Only the load at the start says something about other work: by the end, the run's own
    # processes are in the average.
    busy = float(m.get("loadavg_start", [0.0])[0])
    if usable and busy > 0.5 * usable:
        out.append(f"Note:    the machine was busy (1-min load {busy:.1f} on {usable} usable "
                   "cores): other work delays wake-ups by up to a scheduler tick, so expect "
                   "noisy, bimodal samples; the interleaving keeps the ratios comparable")
    return out
