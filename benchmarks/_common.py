"""Shared pieces of the benchmark suite: statistics, round-robin runner, tables, workers.

Every section of ``benchmarks/run.py`` runs in a fresh interpreter (a *worker*) so that one
section's children, memory and signal state cannot leak into another's numbers. A worker is
``python benchmarks/_<section>.py --params JSON --out PATH``; it writes its result (a JSON
object) to PATH and its progress to stderr.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

JSONDict: TypeAlias = dict[str, Any]


# -- statistics -----------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]); NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def p90(xs: Sequence[float]) -> float:
    return quantile(xs, 0.9)


def ratio_ci(
    a: Sequence[float], b: Sequence[float], *, rounds: int = 400, seed: int = 1
) -> tuple[float, float]:
    """95% bootstrap interval of median(a) / median(b) (resampling each side independently)."""
    if len(a) < 5 or len(b) < 5:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        ma = statistics.median(rng.choices(a, k=len(a)))
        mb = statistics.median(rng.choices(b, k=len(b)))
        if mb > 0:
            out.append(ma / mb)
    return (quantile(out, 0.025), quantile(out, 0.975))


def median_ci(xs: Sequence[float], *, rounds: int = 400, seed: int = 1) -> tuple[float, float]:
    """95% bootstrap interval of the median."""
    if len(xs) < 5:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    meds = [statistics.median(rng.choices(xs, k=len(xs))) for _ in range(rounds)]
    return (quantile(meds, 0.025), quantile(meds, 0.975))


def summary(xs: Sequence[float]) -> JSONDict:
    return {"n": len(xs), "median": median(xs), "p90": p90(xs),
            "min": min(xs) if xs else math.nan, "max": max(xs) if xs else math.nan}


# -- running methods round-robin ------------------------------------------------------------------


def round_robin(
    methods: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    batch: Mapping[str, int] | int = 1,
    every: Mapping[str, int] | None = None,
    first_round: int = 0,
    warmup: int = 0,
    progress: str = "",
    cpu_out: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time each method ``batch`` calls at a time, the methods in turn, for ``rounds`` rounds.

    The order is shuffled every round (seeded, so runs are repeatable) so that drift on a
    shared machine hits every method alike and no method always follows the same other one
    (a call can leave costs behind for the next, e.g. copy-on-write faults after a fork());
    with the default batch of 1 the methods alternate call by call. A method in ``every`` runs
    only in every k-th round (for the very slow ones). Returns seconds per call (one sample per
    call). The cyclic GC is off while timing and runs between batches, as timeit does. With
    ``cpu_out``, this process's CPU time per call (all threads; not the children's) goes there.
    """
    names = list(methods)
    sizes = {n: batch if isinstance(batch, int) else batch.get(n, 1) for n in names}
    period = {n: max(1, (every or {}).get(n, 1)) for n in names}
    for name in names:
        for _ in range(warmup):
            methods[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    cpu_clock = time.process_time_ns
    if cpu_out is not None:
        for n in names:
            cpu_out.setdefault(n, [])
    for r in range(first_round, first_round + rounds):
        order = list(names)
        random.Random(r).shuffle(order)
        for name in order:
            if r % period[name]:
                continue
            fn = methods[name]
            out = samples[name]
            if sizes[name] > 1:
                gc.collect()
            gc.disable()
            try:
                for _ in range(sizes[name]):
                    c0 = cpu_clock()
                    t0 = clock()
                    fn()
                    t1 = clock()
                    c1 = cpu_clock()
                    out.append((t1 - t0) / 1e9)
                    if cpu_out is not None:
                        cpu_out[name].append((c1 - c0) / 1e9)
            finally:
                gc.enable()
        if r % 8 == 7:
            gc.collect()
        if progress:
            log(f"{progress}: round {r + 1}/{rounds}")
    return samples


# -- targets --------------------------------------------------------------------------------------


@dataclass
class Target:
    """A goal from the issues, checked against this run's medians (never asserted)."""

    label: str
    value: float          # the measured quantity (a ratio, or an absolute number)
    limit: float
    kind: str             # "le": value <= limit; "ge": value >= limit
    unit: str = "x"       # "x" for ratios, else the unit of an absolute value
    ci: tuple[float, float] = (math.nan, math.nan)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if math.isnan(self.value):
            return None
        return self.value <= self.limit if self.kind == "le" else self.value >= self.limit

    def as_json(self) -> JSONDict:
        return {"label": self.label, "value": self.value, "limit": self.limit,
                "kind": self.kind, "unit": self.unit, "ci95": list(self.ci),
                "met": self.met, "note": self.note}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Target:
        ci = d.get("ci95") or [math.nan, math.nan]
        return cls(d["label"], float(d["value"]), float(d["limit"]), d["kind"],
                   d.get("unit", "x"), (float(ci[0]), float(ci[1])), d.get("note", ""))

    def describe(self) -> tuple[str, str, str, str]:
        """(target, measured, 95% CI, verdict) as text."""
        op = "<=" if self.kind == "le" else ">="
        target = f"{op} {fmt_num(self.limit)}{self.unit}" if self.unit == "x" else (
            f"{op} {fmt_num(self.limit)} {self.unit}")
        measured = ("-" if math.isnan(self.value)
                    else f"{fmt_num(self.value)}{self.unit}" if self.unit == "x"
                    else f"{fmt_num(self.value)} {self.unit}")
        ci = "" if math.isnan(self.ci[0]) else f"{fmt_num(self.ci[0])}-{fmt_num(self.ci[1])}"
        return target, measured, ci, self.verdict

    @property
    def verdict(self) -> str:
        """met / MISSED, qualified when the 95% interval straddles the limit."""
        met = self.met
        if met is None:
            return "n/a"
        lo, hi = self.ci
        straddles = not math.isnan(lo) and lo <= self.limit <= hi
        if straddles:
            return "met (within noise)" if met else "missed (within noise)"
        return "met" if met else "MISSED"


# -- formatting -----------------------------------------------------------------------------------


def fmt_num(x: float) -> str:
    if math.isnan(x):
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_time(seconds: float) -> str:
    """Seconds as a short human string: ns/us/ms/s with 3 significant digits."""
    if math.isnan(seconds):
        return "-"
    if seconds == math.inf:
        return "never"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{fmt_num(seconds / scale)} {unit}"
    return f"{fmt_num(seconds / 1e-9)} ns"


def fmt_ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{fmt_num(x)}x"


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, indent: str = "  ",
                 markdown: bool = False) -> str:
    """A plain-text (aligned) or GitHub-markdown table. The first column is left-aligned."""
    rows = [list(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(cells[0]).ljust(widths[0])]
        parts += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=False)]
        return indent + "  ".join(parts).rstrip()

    sep = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only the report."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- workers --------------------------------------------------------------------------------------


def worker_env() -> dict[str, str]:
    """The environment for worker interpreters: this one's, with tether importable."""
    import tether

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(tether.__file__)))
    paths = [src, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_worker(script: str, params: Mapping[str, Any], *, timeout: float = 900.0) -> JSONDict:
    """Run ``benchmarks/<script>`` in a fresh interpreter and return the JSON it wrote.

    Its stdout and stderr go to our stderr (progress). A worker that fails raises
    RuntimeError naming it; the caller decides whether the run goes on.
    """
    path = os.path.join(HERE, script)
    fd, out = tempfile.mkstemp(prefix="tether-bench-", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(  # noqa: TET102  the harness, not the thing measured
            [sys.executable, path, "--params", json.dumps(dict(params)), "--out", out],
            env=worker_env(), stdout=sys.stderr, stderr=sys.stderr, timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} exited with status {proc.returncode}")
        with open(out, encoding="utf-8") as f:
            data: JSONDict = json.load(f)
        return data
    finally:
        os.unlink(out)


def worker_main(fn: Callable[[JSONDict], JSONDict]) -> None:
    """The ``__main__`` of a worker script: parse --params/--out, run ``fn``, write JSON."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    result = fn(json.loads(ns.params))
    with open(ns.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


def build_c(tmpdir: str, name: str, source: str) -> str | None:
    """Compile a small C helper (static if possible) into tmpdir; None without a compiler."""
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = os.path.join(tmpdir, name + ".c")
    exe = os.path.join(tmpdir, name)
    with open(src, "w", encoding="ascii") as f:
        f.write(source)
    for extra in (["-static"], []):
        res = subprocess.run(  # noqa: TET102  build step of the harness
            [cc, "-O2", *extra, "-o", exe, src], capture_output=True, check=False)
        if res.returncode == 0:
            return exe
    return None


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``need`` (up to the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(hard, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def cpu_seconds(who: int | None = None) -> float:
    """user+sys CPU seconds of this process (or RUSAGE_CHILDREN)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF if who is None else who)
    return ru.ru_utime + ru.ru_stime
