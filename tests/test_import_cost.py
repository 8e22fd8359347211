"""`import tether` imports none of the heavy modules a path may not need: they come with
the first use of a name that needs them (PEP 562), so start-up cannot regress unseen."""

from __future__ import annotations

import os
import sys

import tether

# Each costs milliseconds at start-up, or pulls in modules that do.
HEAVY = ("subprocess", "dataclasses", "inspect", "enum", "secrets", "locale", "re", "asyncio",
         "typing", "socket", "selectors", "threading")

PROBE = """
import sys
before = set(sys.modules)
import tether
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_import_tether_imports_no_heavy_module() -> None:
    # -S: no site, whose .pth files may have imported any of them already.
    src = os.path.dirname(os.path.dirname(tether.__file__))
    out = tether.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True,
                     check=True, env={**os.environ, "PYTHONPATH": src})
    imported = set(out.stdout.split())
    assert "tether" in imported
    assert sorted(imported & set(HEAVY)) == []


def test_public_names_resolve_on_first_use() -> None:
    for name in tether.__all__:
        assert getattr(tether, name) is not None
    assert tether.TimeoutExpired.__module__ == "tether._kernel.errors"
