"""Opting out: a marked test (or one the ini's tether_allow_leak names) may leave a process
for later tests; it is killed when the session ends."""

import subprocess

import pytest

started = {}


@pytest.mark.tether_allow_leak
def test_starts_a_daemon_on_purpose():
    started["marked"] = subprocess.Popen(["sleep", "300"])


def test_named_in_the_ini():
    started["ini"] = subprocess.Popen(["sleep", "301"])


def test_later_tests_see_them():
    assert started["marked"].poll() is None
    assert started["ini"].poll() is None


def test_unmarked_leak_still_fails():
    subprocess.Popen(["sleep", "302"])
