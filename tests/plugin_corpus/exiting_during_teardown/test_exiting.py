"""Processes already on their way out when the test (or fixture) ends: a gateway whose
exit() returns before its remote is gone."""

import subprocess
import sys

import pytest

SLOW_EXIT = """
import signal, sys, time
def on_term(*_):
    time.sleep(0.2)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(300)
"""


def start():
    child = subprocess.Popen([sys.executable, "-c", SLOW_EXIT], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"  # the handler is in place
    return child


def test_terminated_without_waiting():
    start().terminate()


@pytest.fixture(scope="module")
def remote():
    child = start()
    yield child
    child.terminate()  # returns at once; the remote takes a moment to go


def test_uses_remote(remote):
    assert remote.poll() is None
