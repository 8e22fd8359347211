"""Section 8: start-up. Whole processes, timed from the spawn to the reap: `python -c pass`
(the floor), `python -c 'import tether'`, and `python -m tether run -- true` (the CLI's
whole life: import, one guarded tree, exit). Commands alternate in shuffled order.

Bytecode: `pip install .` compiles every module to bytecode, and the interpreter's own
library has it too, so a user's start-up never compiles source. A checkout run with
PYTHONDONTWRITEBYTECODE=1 (as CI and the work trees here) would compile tether's ~40 modules
on every start and measure that instead. So every command runs with its bytecode in a
temporary PYTHONPYCACHEPREFIX, written by one untimed run of each command first: the floor
and tether alike load compiled code, as on a default install. `-S` (no site) is shown for
information: what site's own imports (and any .pth files here) add to every command, and
what `tether run` costs where site imports none of the modules it needs (typing, re, enum,
collections...). tether stays importable under -S: its directory is on PYTHONPATH."""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time

from _common import JSONDict, log, worker_env

COMMANDS = {
    "pass": [sys.executable, "-c", "pass"],
    "import": [sys.executable, "-c", "import tether"],
    "cli_run": [sys.executable, "-m", "tether", "run", "--", "true"],
    "pass_nosite": [sys.executable, "-S", "-c", "pass"],
    "cli_run_nosite": [sys.executable, "-S", "-m", "tether", "run", "--", "true"],
}
LABELS = {
    "pass": "python3 -c pass",
    "import": "python3 -c 'import tether'",
    "cli_run": "python3 -m tether run -- true",
    "pass_nosite": "python3 -S -c pass (no site, for information)",
    "cli_run_nosite": "python3 -S -m tether run -- true (no site, for information)",
}
BYTECODE = ("compiled (a temporary PYTHONPYCACHEPREFIX, written by one untimed run of each "
            "command, as `pip install .` leaves an install)")


def _env(prefix: str) -> dict[str, str]:
    env = {k: v for k, v in worker_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    return env


def run(params: JSONDict) -> JSONDict:
    rounds = 10 if params.get("quick") else 40
    samples: dict[str, list[float]] = {k: [] for k in COMMANDS}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tether-bench-pyc-") as prefix:
        env = _env(prefix)
        for command in COMMANDS.values():  # writes the bytecode; not timed
            subprocess.run(command, check=True, env=env)
        for _ in range(rounds):
            keys = list(COMMANDS)
            random.shuffle(keys)
            for key in keys:
                start = time.perf_counter()
                subprocess.run(COMMANDS[key], check=True, env=env)
                samples[key].append(time.perf_counter() - start)
    log(f"start-up: {rounds} rounds")
    return {"labels": LABELS, "samples_s": samples, "bytecode": BYTECODE,
            "seconds": time.monotonic() - t0}
