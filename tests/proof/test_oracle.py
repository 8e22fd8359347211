"""The oracle's own negative controls: tests/oracle.py is what every other test trusts, so it
must not be blind. An orphaned grandchild comes back to this subreaper and keeps ECHILD away
until it ends; an exited, unreaped child is seen as a pending zombie; a PID namespace's init
runs as PID 1, and its exit takes what is left in the namespace with it."""

from __future__ import annotations

import os
import select

import tether
from oracle import no_descendants, reap_until, run_as_namespace_init, zombie_pending

from ._harness import python_env


def test_an_orphaned_grandchild_comes_back_and_holds_off_echild() -> None:
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    try:
        # The shell leaves a background cat reading the gate, says its pid, and exits (fd 3:
        # a background job's own stdin is /dev/null).
        s = tether.spawn_lifelined(["sh", "-c", "exec 3<&0; cat <&3 >/dev/null & echo $!"],
                                   stdin=gate_r, stdout=pid_w)
    finally:
        os.close(gate_r)
        os.close(pid_w)
    with os.fdopen(pid_r, "rb") as f:
        orphan = int(f.read())
    assert s.pidfd.wait().code == 0
    s.lifeline.close()
    s.pidfd.close()
    try:
        assert not no_descendants(), "the orphaned cat did not come back to the subreaper"
        assert not reap_until(0.0).empty
    finally:
        os.close(gate_w)  # now the cat reads EOF and exits
    seen = reap_until(10.0)
    assert seen.empty
    assert seen.status[orphan] == (os.CLD_EXITED, 0)
    assert seen.empty_at is not None and seen.empty_at >= seen.at[orphan]


def test_zombie_probe_sees_an_unreaped_child() -> None:
    # An exited, unreaped child is "pending", and the probe itself reaps nothing.
    s = tether.spawn_lifelined(["true"])
    poller = select.poll()
    poller.register(s.pidfd.fileno(), select.POLLIN)  # readable once it has exited
    assert poller.poll(5000), "the child never exited"
    assert zombie_pending()
    assert zombie_pending()
    assert s.pidfd.wait().code == 0
    assert not zombie_pending()


def test_a_namespace_init_is_pid_1_and_its_exit_empties_the_namespace() -> None:
    exit_, out = run_as_namespace_init(["sh", "-c", "sleep 300 & echo $$; exit 4"],
                                       env=python_env())
    assert (exit_.code, out) == (4, b"1\n")
    # The kernel killed the sleep when its init exited; it came back to us to be reaped.
    assert reap_until(10.0).empty
