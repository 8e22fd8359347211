"""Pidfd: no public constructor, race-free signalling, waits without polling loops, the
state in repr, info(), and PID reuse that can never misdirect a signal."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import threading

import pytest

import oracle
import tether
from tether._kernel import features as _features

pytestmark = pytest.mark.usefixtures("each_clone_method")

PY = sys.executable


def test_pidfd_has_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        tether.Pidfd(3, 1)
    assert not hasattr(tether.Pidfd, "from_pid")


def test_send_signal_after_reap_raises_process_lookup_error() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    s.pidfd.send_signal(signal.SIGTERM)
    s.pidfd.wait()
    with pytest.raises(ProcessLookupError):
        s.pidfd.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("sig", [2**40, -(2**40), 2**31, 1000, -1])
def test_an_invalid_signal_of_any_size_is_the_kernels_einval(sig: int) -> None:
    # Not OverflowError (the stdlib's answer beyond a C int): the same error for every
    # invalid signal, as pidfd_send_signal gives for one that fits; the process is untouched.
    s = tether.spawn_lifelined(["sleep", "300"])
    try:
        with pytest.raises(OSError) as info:
            s.pidfd.send_signal(sig)
        assert info.type is OSError and info.value.errno == errno.EINVAL
        assert s.pidfd.poll() is None
    finally:
        s.pidfd.send_signal(signal.SIGKILL)
        s.pidfd.wait()


def test_kernel_refuses_a_reaped_pidfd_too() -> None:
    # Even bypassing the cached Exit, the kernel answers ESRCH for a reaped process.
    s = tether.spawn_lifelined(["true"])
    s.pidfd.wait()
    with pytest.raises(ProcessLookupError):
        signal.pidfd_send_signal(s.pidfd.fileno(), signal.SIGTERM)


def test_poll_is_none_while_running_and_exit_after() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    assert s.pidfd.poll() is None
    s.pidfd.send_signal(signal.SIGKILL)
    assert s.pidfd.wait().signal == signal.SIGKILL
    assert s.pidfd.poll() == s.pidfd.wait()


def test_wait_timeout_raises_tether_timeout_expired_a_subprocess_one() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    with pytest.raises(subprocess.TimeoutExpired) as info:
        s.pidfd.wait(timeout=0.05)
    assert isinstance(info.value, tether.TimeoutExpired)
    s.pidfd.send_signal(signal.SIGKILL)
    s.pidfd.wait()


def test_negative_timeout_is_a_value_error() -> None:
    s = tether.spawn_lifelined(["true"])
    with pytest.raises(ValueError):
        s.pidfd.wait(timeout=-1)
    s.pidfd.wait()


def test_any_use_of_a_closed_pidfd_is_a_value_error() -> None:
    s = tether.spawn_lifelined(["true"])
    s.pidfd.wait()
    s.pidfd.close()
    for call in (s.pidfd.poll, s.pidfd.wait, s.pidfd.fileno, s.pidfd.info,
                 lambda: s.pidfd.send_signal(0)):
        with pytest.raises(ValueError):
            call()


def test_close_reaps_an_exited_child_so_no_zombie_is_left() -> None:
    s = tether.spawn_lifelined(["true"])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        signal.sigtimedwait({signal.SIGCHLD}, 5)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    s.pidfd.close()
    with pytest.raises(ChildProcessError):
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)


def test_repr_states_the_state() -> None:
    s = tether.spawn_lifelined(["sh", "-c", "exit 4"])
    s.pidfd.wait()
    assert "exited with code 4" in repr(s.pidfd)
    s.pidfd.close()
    assert "exited with code 4" in repr(s.pidfd)
    r = tether.spawn_lifelined(["sleep", "300"])
    assert "running" in repr(r.pidfd)
    r.pidfd.send_signal(signal.SIGKILL)
    r.pidfd.wait()
    assert "SIGKILL" in repr(r.pidfd)


def test_context_manager_closes() -> None:
    s = tether.spawn_lifelined(["true"])
    with s.pidfd as p:
        p.wait()
    assert s.pidfd.closed


def test_concurrent_waiters_all_get_the_same_exit() -> None:
    gate_r, gate_w = os.pipe()
    try:
        s = tether.spawn_lifelined(["sh", "-c", "read x; exit 5"], stdin=gate_r)
    finally:
        os.close(gate_r)
    results: list[tether.Exit] = []
    threads = [threading.Thread(target=lambda: results.append(s.pidfd.wait())) for _ in range(8)]
    for t in threads:
        t.start()
    os.close(gate_w)  # the child reads EOF and exits while eight threads wait
    for t in threads:
        t.join()
    assert len(results) == 8
    assert set(results) == {tether.Exit(code=5, signal=None)}


def test_info_reports_pid_and_exit_after_reap() -> None:
    s = tether.spawn_lifelined(["sleep", "300"])
    try:
        info = s.pidfd.info()
    except tether.Unsupported:
        s.pidfd.send_signal(signal.SIGKILL)
        s.pidfd.wait()
        pytest.skip("PIDFD_GET_INFO needs Linux 6.13")
    assert info.pid == s.pid
    assert info.ppid == os.getpid()
    assert info.exit is None
    s.pidfd.send_signal(signal.SIGKILL)
    s.pidfd.wait()
    after = s.pidfd.info()
    if after.exit is not None:  # PIDFD_INFO_EXIT, 6.15+
        assert after.exit.signal == signal.SIGKILL


def test_process_group_signal_reaches_the_whole_group() -> None:
    s = tether.spawn_lifelined(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    try:
        s.pidfd.send_signal(signal.SIGKILL, process_group=True)
    except tether.Unsupported:
        s.pidfd.send_signal(signal.SIGKILL)
        s.pidfd.wait()
        pytest.skip("PIDFD_SIGNAL_PROCESS_GROUP needs Linux 6.9")
    assert s.pidfd.wait().signal == signal.SIGKILL
    # The two sleeps were in the group: they die too and come back to the subreaper.
    assert oracle.reap_until(10.0).empty


REUSE = r"""
import os, signal, sys, tether
from tether._kernel import core as _core
from tether._kernel import features as _features
methods = {'clone3': _core.CLONE_CLONE3, 'legacy': _core.CLONE_LEGACY,
           'clone3, fd table copied': _core.CLONE_CLONE3,
           'clone3, guard starts the program': _core.CLONE_CLONE3}
_features.force_clone_method(methods[sys.argv[1]])
_features.force_fd_table_copy(sys.argv[1].endswith('copied'))
assert os.getpid() == 1, os.getpid()
victim = tether.spawn_lifelined(['sleep', '300'])
number = victim.pid
victim.pidfd.send_signal(signal.SIGKILL)
victim.pidfd.wait()
with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
    f.write(str(number - 1))
newcomer = tether.spawn_lifelined(['sleep', '300'])
print('same-number', newcomer.pid == number)
try:
    victim.pidfd.send_signal(signal.SIGKILL)
    print('stale-handle', 'DELIVERED')
except ProcessLookupError:
    print('stale-handle', 'refused')
try:
    signal.pidfd_send_signal(victim.pidfd.fileno(), signal.SIGKILL)
    print('raw-pidfd', 'DELIVERED')
except ProcessLookupError:
    print('raw-pidfd', 'refused')
print('newcomer', 'alive' if newcomer.pidfd.poll() is None else 'DEAD')
newcomer.pidfd.send_signal(signal.SIGKILL)
newcomer.pidfd.wait()
"""


def test_stale_handle_never_reaches_a_process_that_reused_the_pid(
    python_env: dict[str, str], each_clone_method: str
) -> None:
    # The namespace's init needs clone3 (CLONE_NEWPID); the spawns inside it use the method
    # under test.
    _features.force_clone_method(None)
    exit_, out = oracle.run_as_namespace_init([PY, "-c", REUSE, each_clone_method],
                                              env=python_env)
    assert exit_.code == 0, out
    report = dict(line.split() for line in out.decode().splitlines())
    assert report == {
        "same-number": "True",
        "stale-handle": "refused",
        "raw-pidfd": "refused",
        "newcomer": "alive",
    }


def test_a_close_racing_a_signal_never_lets_the_signal_reach_the_fd_numbers_next_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The signal's syscall is caught just before it runs (the handle has read its fd): a
    # close() on another thread gets its chance, then the number is handed out again.
    # The signal must still reach the handle's own process, never the number's next owner.
    victim = tether.spawn_lifelined(["sleep", "300"])
    probe = victim.pidfd._dup()
    bystanders: list[tether.Spawned] = []
    real = signal.pidfd_send_signal

    def racing(fd: int, sig: int, info: None, flags: int) -> None:
        closer = threading.Thread(target=victim.pidfd.close)
        closer.start()
        closer.join(timeout=0.2)  # a close that must not get through while we signal
        bystanders.append(tether.spawn_lifelined(["sleep", "300"]))
        real(fd, sig, info, flags)
        closers.append(closer)

    closers: list[threading.Thread] = []
    monkeypatch.setattr(signal, "pidfd_send_signal", racing)
    victim.pidfd.send_signal(signal.SIGKILL)
    monkeypatch.undo()
    closers[0].join()
    bystander = bystanders[0].pidfd
    assert bystander.poll() is None, "the signal reached the process that got the fd number"
    bystander.send_signal(signal.SIGKILL)
    bystander.wait()
    poller = select.poll()
    poller.register(probe, select.POLLIN)
    assert poller.poll(10_000), "the signal did not reach the handle's own process"
    os.close(probe)


def test_a_wait_in_progress_returns_the_exit_when_another_thread_closes_the_handle() -> None:
    gate_r, gate_w = os.pipe()
    try:
        s = tether.spawn_lifelined(["sh", "-c", "read x; exit 3"], stdin=gate_r)
    finally:
        os.close(gate_r)
    results: list[object] = []
    entered = threading.Event()
    real_waitid = os.waitid

    def waitid(*args: int) -> object:
        entered.set()  # the waiter is in its blocking wait
        return real_waitid(*args)

    def waiter() -> None:
        try:
            results.append(s.pidfd.wait())
        except BaseException as exc:  # asserted below
            results.append(exc)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "waitid", waitid)
        t = threading.Thread(target=waiter)
        t.start()
        assert entered.wait(10)
        s.pidfd.close()  # the handle goes; the wait that began before it does not
    os.close(gate_w)
    t.join()
    assert results == [tether.Exit(code=3, signal=None)]
    s.lifeline.close()
