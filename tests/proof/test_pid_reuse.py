"""PID-reuse torture: in a PID namespace of our own, every trial ends a process, forces its
number onto a newcomer (``ns_last_pid``), and then signals the dead process through its
stale handle.

The guarantee under attack: a tether handle names one process for ever; a signal through a
handle whose process was reaped raises ProcessLookupError and never reaches the process that
now holds the number. Oracle, exact per trial and free of sleeps: the stale handle gets
SIGTERM, then the newcomer gets SIGKILL through its own pidfd and is reaped. A default-action
SIGTERM marks the whole process as exiting with SIGTERM the moment it is *sent*
(complete_signal), so the newcomer's wait status says which signal reached it first: SIGTERM
means the stale signal was misdirected, SIGKILL means it was not.

Handles tried: ``spawn_lifelined``'s Pidfd, the same pidfd through the raw syscall (no cached
exit in the way), ``tether.spawn``'s program pidfd (handed over by the guard), and
``run_in_fork``'s self-opened pidfd. Side by side, the same scenario with ``os.kill(number)``,
the broken "handle" every suite must catch: every signal is misdirected.
"""

from __future__ import annotations

import json

import pytest

from oracle import run_as_namespace_init

from ._harness import PY, python_env, record, size

NS_INIT = r'''
import json, os, signal, sys, time
import tether

strategy, trials = sys.argv[1], int(sys.argv[2])
assert os.getpid() == 1, "not the init of a fresh PID namespace"
# Warm up: the first spawn probes the clone method by cloning once; that must not take a
# number we are about to force.
tether.spawn_lifelined(["true"]).pidfd.wait()


def force_next_pid(number):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(number - 1))


def victim():
    """(number, handle, end): a process to be ended, its number, and how to end it."""
    if strategy in ("pidfd", "raw-pidfd", "os.kill"):
        s = tether.spawn_lifelined(["sleep", "300"])
        def end():
            s.pidfd.send_signal(signal.SIGKILL)
            s.pidfd.wait()
            s.lifeline.close()
        return s.pid, s.pidfd, end
    if strategy in ("child", "child-raw"):
        c = tether.spawn(["sleep", "300"], contain="group")
        def end():
            c.kill()
            c.wait()
        return c.pid, c.pidfd, end
    if strategy == "fork":
        s = tether.run_in_fork(time.sleep, 300)
        def end():
            s.pidfd.send_signal(signal.SIGKILL)
            s.pidfd.wait()
            s.lifeline.close()
        return s.pid, s.pidfd, end
    raise SystemExit("unknown strategy " + strategy)


def stale_signal(number, handle, sig):
    if strategy in ("pidfd", "child", "fork"):
        handle.send_signal(sig)
    elif strategy in ("raw-pidfd", "child-raw"):
        signal.pidfd_send_signal(handle.fileno(), sig)
    elif strategy == "os.kill":
        os.kill(number, sig)  # the broken handle: a number


out = {"trials": trials, "reused": 0, "refused": 0, "sent": 0, "misdirected": 0, "errors": []}
for _ in range(trials):
    number, handle, end = victim()
    end()
    force_next_pid(number)
    newcomer = tether.spawn_lifelined(["sleep", "300"])
    if newcomer.pid == number:
        out["reused"] += 1
    try:
        stale_signal(number, handle, signal.SIGTERM)
        out["sent"] += 1
    except ProcessLookupError:
        out["refused"] += 1
    except Exception as exc:
        out["errors"].append(repr(exc))
    newcomer.pidfd.send_signal(signal.SIGKILL)
    got = newcomer.pidfd.wait()
    if got.signal == signal.SIGTERM:
        out["misdirected"] += 1
    newcomer.lifeline.close()
    newcomer.pidfd.close()
    handle.close()
print(json.dumps(out))
'''


def check_reuse(strategy: str, trials: int) -> dict[str, object]:
    """Run ``trials`` forced reuses with ``strategy`` as PID 1 of a fresh namespace."""
    exit_, raw = run_as_namespace_init([PY, "-S", "-c", NS_INIT, strategy, str(trials)],
                                       env=python_env())
    assert exit_.code == 0, f"the namespace's init failed: {exit_}, {raw!r}"
    report: dict[str, object] = json.loads(raw)
    return report


def problems(report: dict[str, object]) -> list[str]:
    """What the guarantee forbids, from one strategy's report."""
    out = []
    trials = report["trials"]
    if report["reused"] != trials:
        out.append(f"the number was reused in only {report['reused']} of {trials} trials")
    if report["misdirected"]:
        out.append(f"{report['misdirected']} of {trials} stale signals reached the process "
                   "now holding the number")
    if report["sent"]:
        out.append(f"{report['sent']} of {trials} stale signals were accepted")
    if report["refused"] != trials:
        out.append(f"only {report['refused']} of {trials} stale signals raised "
                   f"ProcessLookupError (errors: {report['errors'][:3]})")  # type: ignore[index]
    return out


TETHER_STRATEGIES = {  # share of the trials (smoke ~200, full 10,000 in all)
    "pidfd": size(80, 4000),
    "raw-pidfd": size(40, 2000),
    "child": size(20, 1000),
    "child-raw": size(20, 1000),
    "fork": size(40, 2000),
}


@pytest.mark.parametrize("strategy", sorted(TETHER_STRATEGIES))
def test_stale_tether_handles_never_reach_the_new_holder(strategy: str) -> None:
    report = check_reuse(strategy, TETHER_STRATEGIES[strategy])
    record(f"pid-reuse[{strategy}]",
           f"{report['trials']} forced reuses, {report['reused']} got the same number, "
           f"{report['refused']} stale signals refused (ProcessLookupError), "
           f"{report['misdirected']} misdirected", **report)
    assert problems(report) == []


def test_checker_catches_signalling_by_number() -> None:
    # Side by side: the same scenario through os.kill(number). Every signal must be reported
    # as misdirected, or the checker above could be passing vacuously.
    trials = size(50, 2000)
    report = check_reuse("os.kill", trials)
    record("pid-reuse[os.kill, broken]",
           f"{report['trials']} forced reuses, {report['misdirected']} of them misdirected "
           "the signal to the new holder of the number", **report)
    assert report["misdirected"] == report["reused"] == trials
    found = problems(report)
    assert any("reached the process now holding the number" in p for p in found), found
