"""Section 8: start-up. Whole processes, timed from the spawn to the reap: `python -c pass`
(the floor), `python -c 'import tether'`, and `python -m tether run -- true` (the CLI's
whole life: import, one guarded tree, exit). Commands alternate in shuffled order."""

from __future__ import annotations

import random
import subprocess
import sys
import time

from _common import JSONDict, log

COMMANDS = {
    "pass": [sys.executable, "-c", "pass"],
    "import": [sys.executable, "-c", "import tether"],
    "cli_run": [sys.executable, "-m", "tether", "run", "--", "true"],
}
LABELS = {
    "pass": "python3 -c pass",
    "import": "python3 -c 'import tether'",
    "cli_run": "python3 -m tether run -- true",
}


def run(params: JSONDict) -> JSONDict:
    rounds = 10 if params.get("quick") else 40
    samples: dict[str, list[float]] = {k: [] for k in COMMANDS}
    t0 = time.monotonic()
    for _ in range(rounds):
        keys = list(COMMANDS)
        random.shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            subprocess.run(COMMANDS[key], check=True)
            samples[key].append(time.perf_counter() - start)
    log(f"start-up: {rounds} rounds")
    return {"labels": LABELS, "samples_s": samples, "seconds": time.monotonic() - t0}
