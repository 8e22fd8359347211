"""Measure `tether lint` throughput on a large real codebase: the installed standard library.

A measurement, not a test: it prints lines, seconds and lines/second and asserts nothing.
The target is >= 50,000 lines/s on one core.

    PYTHONPATH=src python benchmarks/bench_lint.py [PATH]
"""

from __future__ import annotations

import argparse
import sysconfig
import time

from tether.lint import check_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()

    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        report = check_paths([args.path])
        best = min(best, time.perf_counter() - start)

    print(f"path:      {args.path}")
    print(f"files:     {report.files_checked} (+{len(report.errors)} unparsable, skipped)")
    print(f"findings:  {len(report.findings)}")
    print(f"lines:     {report.lines_checked}")
    print(f"seconds:   {best:.3f} (best of {args.repeat})")
    print(f"lines/s:   {report.lines_checked / best:,.0f}")


if __name__ == "__main__":
    main()
