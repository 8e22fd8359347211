"""Real leaks, which must still be caught: each of these tests fails at teardown."""

import multiprocessing
import subprocess
import time

import pytest


def test_popen_leak():
    subprocess.Popen(["sleep", "300"])


def test_daemon_leak():
    subprocess.run(["sh", "-c", "setsid sh -c 'sleep 301 >/dev/null 2>&1 &' &"], check=True)


def test_multiprocessing_leak():
    multiprocessing.get_context("spawn").Process(target=time.sleep, args=(302,)).start()


@pytest.fixture(scope="module")
def leaky_server():
    yield subprocess.Popen(["sleep", "303"])


def test_leaky_fixture(leaky_server):
    pass
