"""Every example in README.md runs as pasted (issue 12).

Each fenced block is found anew on every run, so a block added to the README is picked up
without touching this file:

* a ``python`` block runs in a fresh interpreter (its own temporary directory, a timeout) and
  must exit 0; a comment ``# prints "X"`` in it says that ``X`` is a line of its output (the
  lines so named must come out in that order);
* a ``sh`` block marked ``<!-- run-tether-only: why -->`` has its ``tether ...`` commands run
  (as ``python -m tether ...``, this checkout's tether), each must exit 0; an unmarked ``sh``
  block is run whole;
* any other block, or one that cannot run, is marked ``<!-- not-run: why -->`` on the line
  before its fence. An unmarked block of another kind fails the test: nothing is skipped
  silently, and the marked ones are listed as skips with their reason.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import tether

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*(not-run|run-tether-only):\s*(.+?)\s*-->")
PRINTS = re.compile(r'#\s*prints\s+"([^"]*)"')
RUNNABLE = {"python", "sh"}
TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # "not-run" / "run-tether-only", from the line before the fence
    reason: str


def readme_blocks() -> list[Block]:
    blocks = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*(\S*)", lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence[1])
                    and not lines[j].strip("`")), None)
        assert end is not None, f"README.md:{i + 1}: the block is never closed"
        mark = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        blocks.append(Block(i + 1, fence[2], "\n".join(lines[i + 1:end]) + "\n",
                            mark[1] if mark else None, mark[2] if mark else ""))
        i = end + 1
    return blocks


BLOCKS = readme_blocks()


def _param(block: Block) -> object:
    marks = ([pytest.mark.skip(reason=f"README.md:{block.line} not-run: {block.reason}")]
             if block.marker == "not-run" else [])
    return pytest.param(block, id=f"README.md:{block.line}:{block.lang or 'text'}", marks=marks)


def test_the_readme_is_read_and_has_examples_to_run() -> None:
    # Guards the parser: a README whose fences it misread would give no parameters at all.
    assert any(b.lang == "python" and b.marker is None for b in BLOCKS)
    assert any(b.marker == "not-run" for b in BLOCKS)


def _python_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(tether.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HOME"] = str(tmp_path)
    return env


def _assert_prints_in_order(block: Block, out: str) -> None:
    expected = PRINTS.findall(block.code)
    lines = iter(out.splitlines())
    for want in expected:
        assert any(line == want for line in lines), (
            f"README.md:{block.line}: {want!r} not printed (in order); output:\n{out}")


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.lang == "python"])
def test_python_example_runs(block: Block, tmp_path: Path) -> None:
    result = tether.run([sys.executable, "-c", block.code], cwd=tmp_path,
                        env=_python_env(tmp_path), capture_output=True, text=True,
                        timeout=TIMEOUT_S)
    assert result.returncode == 0, (
        f"README.md:{block.line} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    _assert_prints_in_order(block, result.stdout)


def _tether_commands(code: str) -> list[str]:
    """The ``tether ...`` commands of a shell block, one per line or after ``&&``."""
    commands = []
    for line in code.splitlines():
        for part in line.split("&&"):
            if shlex.split(part.strip())[:1] == ["tether"]:
                commands.append(part.strip())
    return commands


def _shell_commands(block: Block) -> list[str]:
    if block.marker == "run-tether-only":
        commands = _tether_commands(block.code)
        assert commands, f"README.md:{block.line} is marked run-tether-only and runs none"
        return [f"{shlex.quote(sys.executable)} -m {c}" for c in commands]
    return [block.code]


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.lang == "sh"])
def test_shell_example_runs(block: Block, tmp_path: Path) -> None:
    for command in _shell_commands(block):
        result = tether.run(["sh", "-c", command], cwd=tmp_path, env=_python_env(tmp_path),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
        assert result.returncode == 0, (
            f"README.md:{block.line}: {command!r} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}")


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.lang not in RUNNABLE])
def test_a_block_of_another_kind_is_marked_not_run(block: Block) -> None:
    pytest.fail(f"README.md:{block.line} ({block.lang or 'no language'}) is not runnable here "
                "and not marked <!-- not-run: why --> on the line before its fence")
