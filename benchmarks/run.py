"""The whole tether benchmark comparison, in one command.

    PYTHONPATH=src python benchmarks/run.py [--quick] [--json PATH] [--chart PATH.png]
                                            [--markdown PATH.md] [--sections LIST]

Sections (each in fresh interpreters, methods interleaved round-robin, medians reported):
  spawn      1+2. spawn+wait of /bin/true from a small parent and from a 2 GiB parent
  latency    3.   exit-notification latency: Pidfd.wait vs bare poll vs Popen.wait(timeout)
  cascade    4.   parent SIGKILLed: time until its 100-process tree is gone, per mode
  supervise  5.   parent CPU per child exit with N children alive
  rss        6.   the guard's peak RSS
  startup    8.   python -c pass vs import tether vs tether run -- true (whole processes)
  others     7.   bench_aio.py (and with --others aio,lint,plugin,floor the lint, pytest-plugin
                  and exec-floor scripts), when present

Measurements, never assertions: missed targets are reported, not raised. The exit status is
non-zero only if a section could not run at all. ``--quick`` uses CI smoke sizes (seconds);
the default takes a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _import_tether() -> None:
    """Make ``import tether`` work from a checkout (src layout) if it is not installed."""
    try:
        import tether
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.join(os.path.dirname(HERE), "src"),
                        os.environ.get("PYTHONPATH")) if p)
        try:
            import tether  # noqa: F401
        except ImportError as exc:
            sys.exit(f"cannot import tether ({exc}); build it first: "
                     "python setup.py build_ext --inplace, and run with PYTHONPATH=src")


_import_tether()

import _chart  # noqa: E402
import _guardrss  # noqa: E402
import _machine  # noqa: E402
import _markdown  # noqa: E402
import _others  # noqa: E402
import _report  # noqa: E402
import _spawnwait  # noqa: E402
import _startup  # noqa: E402
from _common import JSONDict, log, run_worker  # noqa: E402

SECTIONS = ("spawn", "latency", "cascade", "supervise", "rss", "startup", "others")


def _runners(args: argparse.Namespace) -> dict[str, Callable[[], JSONDict]]:
    quick = {"quick": args.quick}
    return {
        "spawn": lambda: _spawnwait.run({**quick, "big_mib": args.big_mib}),
        "latency": lambda: run_worker("_exitlat.py", quick),
        "cascade": lambda: run_worker("_cascade.py", quick),
        "supervise": lambda: run_worker(
            "_supervise.py", {**quick, **({"n": args.children} if args.children else {})}),
        "rss": lambda: _guardrss.run(quick),
        "startup": lambda: _startup.run(quick),
        "others": lambda: _others.run({**quick, "which": _split(args.others)}),
    }


def _command(args: argparse.Namespace, params: JSONDict) -> str:
    """The command that reproduces this run (paths relative to the repository root)."""
    repo = os.path.dirname(HERE)
    parts = ["PYTHONPATH=src python benchmarks/run.py"]
    if params.get("quick"):
        parts.append("--quick")
    if params.get("big_mib", 2048) != (512 if params.get("quick") else 2048):
        parts.append(f"--big-mib {params['big_mib']}")
    if params.get("children"):
        parts.append(f"--children {params['children']}")
    if params.get("cpus"):
        parts.append(f"--cpus {params['cpus']}")
    if params.get("others", "aio") != "aio":
        parts.append(f"--others {params['others']}")
    parts += ["--json benchmarks/results/run.json"]
    if args.chart:
        parts.append(f"--chart {os.path.relpath(os.path.abspath(args.chart), repo)}")
    if args.markdown:
        parts.append(f"--markdown {os.path.relpath(os.path.abspath(args.markdown), repo)}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="tether's benchmark comparison (medians and ratios, never assertions)")
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes (seconds)")
    parser.add_argument("--json", metavar="PATH", help="write every number (raw + tables)")
    parser.add_argument("--chart", metavar="PATH.png", help="write the chart (matplotlib)")
    parser.add_argument("--markdown", metavar="PATH.md",
                        help="write the README-ready section (e.g. docs/benchmarks.md)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--from-json", metavar="PATH",
                        help="measure nothing: rebuild report/chart/markdown from a --json file")
    parser.add_argument("--big-mib", type=int,
                        help="memory the big parent touches (default 2048, 512 with --quick; "
                             "0 skips it). Two processes hold it at once (one forks).")
    parser.add_argument("--children", type=int, help="N for the supervise section")
    parser.add_argument("--others", default="aio",
                        help="which other scripts section 'others' runs: aio,lint,plugin,floor "
                             "(default aio; lint and plugin add about two minutes, floor about "
                             "a minute)")
    parser.add_argument("--cpus", help="pin the whole run to these CPUs, e.g. 0 or 0-1")
    args = parser.parse_args(argv)
    if args.big_mib is None:
        args.big_mib = 512 if args.quick else 2048

    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            saved = json.load(f)
        machine, raw = saved["machine"], saved["raw"]
    else:
        wanted = _split(args.sections)
        unknown = set(wanted) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        if args.cpus:
            os.sched_setaffinity(0, _cpu_list(args.cpus))
        machine = _machine.describe()
        machine["argv"] = " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])])
        print("\n".join(_machine.lines(machine)), flush=True)
        raw = _measure(wanted, _runners(args))
        raw["params"] = {"quick": args.quick, "big_mib": args.big_mib,
                         "children": args.children, "cpus": args.cpus, "others": args.others}
        machine["loadavg_end"] = list(os.getloadavg())

    sections = _report.build(raw)
    if args.from_json:
        print("\n".join(_machine.lines(machine)))
    print(_report.render_text(sections), flush=True)

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "raw": raw,
                       "sections": [s.as_json() for s in sections]}, f, indent=1)
        log(f"numbers written to {args.json}")
    chart_ok = False
    if args.chart:
        os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
        chart_ok = _chart.write(raw, machine, args.chart)
    if args.markdown:
        chart_rel = (os.path.relpath(os.path.abspath(args.chart),
                                     os.path.dirname(os.path.abspath(args.markdown)))
                     if chart_ok and args.chart else None)
        text = _markdown.render(sections, machine, chart=chart_rel,
                                command=_command(args, raw.get("params", {})))
        _markdown.write(args.markdown, text)
        log(f"markdown written to {args.markdown}")
    return 1 if raw.get("errors") else 0


def _measure(wanted: list[str], runners: dict[str, Callable[[], JSONDict]]) -> JSONDict:
    raw: JSONDict = {}
    errors: dict[str, str] = {}
    t0 = time.monotonic()
    for key in SECTIONS:
        if key not in wanted:
            continue
        log(f"section {key}: start ({time.monotonic() - t0:.0f} s into the run)")
        try:
            raw[key] = runners[key]()
        except Exception as exc:  # a broken section must not hide the others' numbers
            traceback.print_exc(file=sys.stderr)
            errors[key] = f"{type(exc).__name__}: {exc}"
        log(f"section {key}: done ({time.monotonic() - t0:.0f} s into the run)")
    if errors:
        raw["errors"] = errors
    raw["total_seconds"] = time.monotonic() - t0
    return raw


def _split(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def _cpu_list(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


if __name__ == "__main__":
    sys.exit(main())
