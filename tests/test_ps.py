"""``tether ps``: the live trees in tether's cgroups, read from the cgroup tree -- program,
process count and limits as recorded on each tree's own directory, and an ended tree gone.
The listing is of this run's cgroup root only (conftest's TETHER_CGROUP_ROOT), so a second
copy of the suite never shows up in it."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

import tether
from conftest import first_line, require_mode
from tether.cli import main


@pytest.fixture(autouse=True)
def _cgroup_mode() -> None:
    require_mode("cgroup")


def _ps_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["ps", "--json"]) == 0
    trees: list[dict[str, Any]] = json.loads(capsys.readouterr().out)["trees"]
    return trees


def test_lists_a_cgroup_tree_with_its_program_processes_and_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["sh", "-c", "sleep 30 & sleep 30 & echo ready; wait"]
    with tether.spawn(argv, contain="cgroup", stdout=subprocess.PIPE,
                      limits=tether.Limits(memory=256 << 20, pids=20)) as child:
        assert child.stdout is not None
        assert first_line(child.stdout.fileno()) == b"ready\n"  # both sleeps started
        (tree,) = _ps_json(capsys)
        assert tree["argv"] == argv
        assert tree["processes"] == 3
        assert tree["limits"] == {"memory": 256 << 20, "pids": 20}
        assert tree["uid"] == os.getuid()
        assert tree["memory_peak"] > 0 and tree["age"] >= 0


def test_a_tree_that_ended_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    child = tether.spawn(["sleep", "30"], contain="cgroup")
    assert [t["argv"] for t in _ps_json(capsys)] == [["sleep", "30"]]
    child.kill()
    child.wait()
    assert _ps_json(capsys) == []


def test_a_tree_without_a_cgroup_is_not_listed_and_the_output_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with tether.spawn(["sleep", "30"], contain="group"):
        assert _ps_json(capsys) == []
        capsys.readouterr()
        assert main(["ps"]) == 0
        out = capsys.readouterr().out
    assert "(0 trees; trees without a cgroup v2 directory of their own (contain='group'" in out
