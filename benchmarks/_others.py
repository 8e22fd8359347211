"""Section 7: the other engineers' benchmark scripts (asyncio, lint, pytest plugin, exec floor).

Each is optional. A script whose ``main`` takes a ``quick`` argument and returns a dict is
called in a fresh worker and its dict is shown as a table; any other script is run as a
program (with ``--quick`` in quick mode if its ``--help`` offers it; otherwise it is skipped
in quick mode) and its output is shown as it printed it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import time

from _common import HERE, JSONDict, log, run_worker, worker_env, worker_main

SCRIPTS = {
    "aio": "bench_aio.py",
    "lint": "bench_lint.py",
    "plugin": "bench_plugin.py",
    "floor": "bench_floor.py",
}


def probe_and_call(params: JSONDict) -> JSONDict:
    """In a fresh worker: import the script; call main(quick=...) if it returns a dict."""
    path = os.path.join(HERE, params["script"])
    spec = importlib.util.spec_from_file_location("_bench_under_test", path)
    if spec is None or spec.loader is None:
        return {"mode": "script"}
    module = importlib.util.module_from_spec(spec)
    sys.argv = [path]
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None:
        return {"mode": "none"}
    try:
        takes_quick = "quick" in inspect.signature(main).parameters
    except (TypeError, ValueError):
        takes_quick = False
    if not takes_quick:
        return {"mode": "script"}
    result = main(quick=bool(params.get("quick")))
    if not isinstance(result, dict):
        return {"mode": "script"}
    return {"mode": "dict", "result": result}


def _run_script(path: str, quick: bool, timeout: float) -> JSONDict:
    env = worker_env()
    args = [sys.executable, path]
    if quick:
        helptext = subprocess.run(  # noqa: TET102  harness
            [*args, "--help"], env=env, capture_output=True, text=True, timeout=60,
            check=False).stdout
        if "--quick" not in helptext:
            return {"skipped": "no --quick option; run without --quick to include it"}
        args.append("--quick")
    proc = subprocess.run(  # noqa: TET102  harness
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {"error": f"exited with status {proc.returncode}",
                "text": proc.stdout + proc.stderr[-2000:]}
    return {"text": proc.stdout}


def run(params: JSONDict) -> JSONDict:
    quick = bool(params.get("quick"))
    timeout = float(params.get("timeout", 900))
    wanted = params.get("which") or list(SCRIPTS)
    out: JSONDict = {}
    for key, script in SCRIPTS.items():
        if key not in wanted:
            out[key] = {"script": script, "skipped": f"not selected (--others {key} adds it)"}
            continue
        path = os.path.join(HERE, script)
        t0 = time.monotonic()
        if not os.path.exists(path):
            out[key] = {"script": script, "skipped": "not present"}
            continue
        log(f"others: {script}")
        try:
            probe = run_worker("_others.py", {"script": script, "quick": quick},
                               timeout=timeout)
            if probe["mode"] == "dict":
                res: JSONDict = {"result": probe["result"]}
            elif probe["mode"] == "none":
                res = {"skipped": "has no main()"}
            else:
                res = _run_script(path, quick, timeout)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            res = {"error": str(exc)}
        res["script"] = script
        res["seconds"] = time.monotonic() - t0
        out[key] = res
    return out


if __name__ == "__main__":
    worker_main(probe_and_call)
