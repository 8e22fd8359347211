"""SignalFd: signals read as data while blocked."""

from __future__ import annotations

import os
import signal

import pytest

import tether


def test_sigusr1_sent_while_blocked_is_read_from_the_fd() -> None:
    with tether.SignalFd([signal.SIGUSR1]) as sfd:
        os.kill(os.getpid(), signal.SIGUSR1)  # noqa: TET201  ourselves
        info = sfd.read(timeout=5)
    assert info is not None
    assert info.signo == signal.SIGUSR1 and info.pid == os.getpid()


def test_read_times_out_with_none() -> None:
    with tether.SignalFd([signal.SIGUSR2]) as sfd:
        assert sfd.read(timeout=0.01) is None


def test_close_restores_the_previous_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with tether.SignalFd([signal.SIGUSR1]):
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_uncatchable_signals_are_refused() -> None:
    with pytest.raises(ValueError):
        tether.SignalFd([signal.SIGKILL])
