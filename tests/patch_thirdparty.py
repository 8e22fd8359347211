"""A stand-in for a third-party library: it knows nothing of tether and spawns through the
stdlib's module attributes, as libraries do (tests/test_patching.py runs it patched)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any


def start_popen(argv: list[str]) -> Any:
    return subprocess.Popen(argv)


def run(argv: list[str]) -> Any:
    return subprocess.run(argv, stdin=subprocess.DEVNULL)


async def start_async(argv: list[str]) -> Any:
    return await asyncio.create_subprocess_exec(*argv)
