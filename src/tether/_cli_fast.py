"""`tether run`'s argv read without argparse: argparse, with the gettext and locale it
imports and the parser it builds, costs milliseconds of every start, and a plain `tether
run [OPTIONS] -- CMD` needs none of it.

The one rule this module owns: it reads an argv only as the full parser (``cli._parser``)
would read it, and gives up (None) on anything else, so that an argv's meaning, messages and
exit status never depend on which of the two read it (tests/test_cli_fast_path.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tether._tree.run import DEFAULT_GRACE

__all__ = ["CONTAIN_CHOICES", "DEFAULT_CONTAIN", "fast_run_args", "number"]

DEFAULT_CONTAIN = "auto"
CONTAIN_CHOICES = ("group", "cgroup", "pidns", "auto")

# `tether run`'s options, for the fast path below: value options, and flags (store_true).
_RUN_VALUES = {"--timeout": "timeout", "--grace": "grace", "--contain": "contain",
               "--memory": "memory", "--cpus": "cpus", "--pids": "pids"}
_RUN_FLAGS = {"--wait-tree": "wait_tree", "--stats": "stats"}


def number(text: str, *, zero_ok: bool) -> float | None:
    """``text`` as a number > 0 (>= 0 if ``zero_ok``), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 or (zero_ok and value >= 0) else None


def fast_run_args(tokens: Sequence[str]) -> dict[str, Any] | None:
    """`tether run`'s arguments (after "run") as the full parser would make them, for the
    plain forms only (exact long options, then ``--`` or the command) with valid values.
    None for anything else (help, abbreviations, a bad or missing value, an option added to
    the parser and not here), which the full parser then handles with its messages."""
    args: dict[str, Any] = {"timeout": None, "grace": DEFAULT_GRACE, "contain": DEFAULT_CONTAIN,
                            "wait_tree": False, "memory": None, "cpus": None, "pids": None,
                            "stats": False}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            i += 1
            break
        if not token.startswith("-"):
            break
        name, eq, value = token.partition("=")
        if name in _RUN_FLAGS and not eq:
            args[_RUN_FLAGS[name]] = True
            i += 1
            continue
        if name not in _RUN_VALUES:
            return None
        if not eq:
            if i + 1 == len(tokens):
                return None
            value = tokens[i + 1]
            i += 1
        i += 1
        if value.startswith("-"):  # argparse's own rules decide what that is
            return None
        args[_RUN_VALUES[name]] = value
    cmd = list(tokens[i:])
    if not cmd:
        return None
    timeout, grace = args["timeout"], args["grace"]
    if timeout is not None:
        timeout = args["timeout"] = number(timeout, zero_ok=False)
        if timeout is None:
            return None
    if isinstance(grace, str):
        grace = args["grace"] = number(grace, zero_ok=True)
        if grace is None:
            return None
    if args["contain"] not in CONTAIN_CHOICES:
        return None
    args["cmd"] = cmd
    return args
