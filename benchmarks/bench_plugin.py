"""Measure what the pytest plugin's leak check adds to each test.

A measurement, not a test: it generates a 200-test suite, runs it with pytest without the
plugin's leak check and with ``--tether`` (each containment available here), and prints the
median wall time per test and the median added per test. Nothing is asserted.

Each test's time is taken from ``pytest_runtest_logstart`` to ``pytest_runtest_logfinish``
(a conftest in the generated suite), so it covers setup, call and teardown -- where the
plugin moves pytest between cgroups, or probes the PIDs a test created -- and not pytest's
start-up. Two suites: tests that do nothing, and tests that each run ``/bin/true`` (so the
subreaper probe has PIDs to look at).

    PYTHONPATH=src python benchmarks/bench_plugin.py [--tests 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import tether
from tether._kernel.cgroup import cgroup_unavailable_reason

TIMING_CONFTEST = '''
import json, os, time

_start = {}
_times = []

def pytest_runtest_logstart(nodeid, location):
    _start[nodeid] = time.perf_counter()

def pytest_runtest_logfinish(nodeid, location):
    _times.append(time.perf_counter() - _start.pop(nodeid))

def pytest_unconfigure(config):
    with open(os.environ["BENCH_TIMES"], "w") as f:
        json.dump(_times, f)
'''

SUITES = {
    "empty": "def test_{i}():\n    pass\n",
    "runs /bin/true": (
        "def test_{i}():\n    subprocess.run(['/bin/true'], check=True)\n"
    ),
}


def _plugin_args() -> list[str]:
    # Installed with its pytest11 entry point the plugin is already loaded; -p would load
    # it twice.
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "tether.pytest_plugin":
            return []
    return ["-p", "tether.pytest_plugin"]


def _write_suite(directory: Path, body: str, tests: int) -> None:
    (directory / "conftest.py").write_text(TIMING_CONFTEST)
    source = "import subprocess\n\n" + "\n".join(body.format(i=i) for i in range(tests))
    (directory / "test_generated.py").write_text(source)


def _run(directory: Path, extra: list[str]) -> list[float]:
    times = directory / "times.json"
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(tether.__file__))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["BENCH_TIMES"] = str(times)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args(),
            *extra, str(directory)]
    done = tether.run(argv, env=env, cwd=str(directory), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"suite failed ({' '.join(extra) or 'no --tether'}):\n{done.stdout}"
                         f"{done.stderr}")
    result: list[float] = json.loads(times.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=200, help="tests in the generated suite")
    parser.add_argument("--runs", type=int, default=3, help="runs of each configuration")
    args = parser.parse_args()

    configs: dict[str, list[str]] = {"without --tether": []}
    why = cgroup_unavailable_reason()
    if why is None:
        configs["--tether (cgroup v2)"] = ["--tether", "--tether-containment=cgroup"]
    else:
        print(f"cgroup v2 containment unavailable here: {why}")
    configs["--tether (subreaper)"] = ["--tether", "--tether-containment=subreaper"]

    print(f"{args.tests} tests, {args.runs} runs per configuration; time per test from "
          "logstart to logfinish (setup + call + teardown)")
    for suite, body in SUITES.items():
        with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
            directory = Path(tmp)
            _write_suite(directory, body, args.tests)
            samples: dict[str, list[float]] = {name: [] for name in configs}
            for _ in range(args.runs):  # interleaved, so drift hits every configuration
                for name, extra in configs.items():
                    samples[name] += _run(directory, extra)
            base = statistics.median(samples["without --tether"])
            print(f"\nsuite: {suite}")
            print(f"  {'configuration':<24} {'median ms/test':>15} {'added ms/test':>14}")
            for name in configs:
                median = statistics.median(samples[name])
                added = "" if name == "without --tether" else f"{(median - base) * 1e3:+.3f}"
                print(f"  {name:<24} {median * 1e3:>15.3f} {added:>14}")


if __name__ == "__main__":
    main()
