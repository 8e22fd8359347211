"""The catalogue of never-use primitives: one `Rule` per code, and which names each code owns.

This module owns one rule: a primitive the doctrine forbids maps to exactly one code, and every
code names the tether replacement in its message.  The checker, the config loader and the docs
all read from here, so a new primitive is added in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Rule:
    """A lint rule: what it flags, what to use instead, and why."""

    code: str
    #: Short kebab-case name, for `--list-rules`.
    name: str
    #: The primitives this rule flags, as a reader would search for them.
    flags: str
    #: What the flagged primitive does wrong, completing "<primitive> ...".
    problem: str
    #: The tether replacement, completing "use ...".
    replacement: str
    #: Why the primitive is never used; shown by `--explain` and in the docs.
    rationale: str

    def message(self, primitive: str) -> str:
        """The one-line finding message for `primitive` (e.g. ``os.kill``)."""
        return f"{primitive} {self.problem}; use {self.replacement}"


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        code="TET101",
        name="fork",
        flags="os.fork, os.forkpty, pty.fork",
        problem="forks outside tether (no pidfd, no lifeline)",
        replacement="tether.run_in_fork()",
        rationale=(
            "A bare fork() gives the parent only a PID number (which can be recycled before it "
            "is used) and gives the child no lifeline, so the child outlives a parent that dies "
            "by SIGKILL, OOM or segfault. tether.run_in_fork() forks through libc, has the child "
            "hand its own pidfd to the parent before returning, and lifelines it."
        ),
    ),
    Rule(
        code="TET102",
        name="subprocess",
        flags=(
            "subprocess.Popen, run, call, check_call, check_output, getoutput, getstatusoutput"
        ),
        problem="creates a process outside tether (PID-addressed, orphanable)",
        replacement="tether.spawn() / tether.run()",
        rationale=(
            "subprocess names the child by PID (Popen.send_signal and Popen.wait can hit a "
            "recycled number), polls with sleeps for timeouts, and leaves the child and its "
            "descendants running when the parent dies. tether.spawn() and tether.run() have the "
            "same shape (returncode, communicate, CompletedProcess) but hold a pidfd and a "
            "lifeline, and contain the whole tree."
        ),
    ),
    Rule(
        code="TET103",
        name="spawn",
        flags=(
            "os.posix_spawn, os.posix_spawnp, os.spawnl/spawnle/spawnlp/spawnlpe/spawnv/spawnve/"
            "spawnvp/spawnvpe, pty.spawn, _posixsubprocess.fork_exec"
        ),
        problem="creates a process outside tether (PID-addressed, orphanable)",
        replacement="tether.spawn() / tether.spawn_lifelined()",
        rationale=(
            "These return a PID number, not a handle: every later signal or wait on it races "
            "with PID reuse, and the child gets no lifeline. tether.spawn_lifelined() creates "
            "the child with clone3(CLONE_PIDFD), so the pidfd exists from the first instant."
        ),
    ),
    Rule(
        code="TET104",
        name="shell",
        flags="os.system, os.popen",
        problem="runs a shell outside tether (orphanable, no handle)",
        replacement="tether.run()",
        rationale=(
            "os.system and os.popen start /bin/sh with no handle on it at all; a parent that "
            "dies leaves the shell and everything it started running. tether.run(['sh', '-c', "
            "cmd]) keeps the same convenience with a lifeline and tree containment."
        ),
    ),
    Rule(
        code="TET105",
        name="multiprocessing-fork",
        flags='multiprocessing.set_start_method("fork"), multiprocessing.get_context("fork")',
        problem='selects the "fork" start method (unlifelined children)',
        replacement="tether.run_in_fork()",
        rationale=(
            "multiprocessing's fork start method forks from Python with no lifeline and tracks "
            "children by PID; workers survive a parent killed by SIGKILL. tether.run_in_fork() "
            "runs a callable in a lifelined, pidfd-addressed child."
        ),
    ),
    Rule(
        code="TET106",
        name="asyncio-subprocess",
        flags="asyncio.create_subprocess_exec, asyncio.create_subprocess_shell",
        problem="creates a process outside tether (PID-addressed, orphanable)",
        replacement="tether.aio.spawn() / tether.aio.run()",
        rationale=(
            "asyncio's subprocess support reaps through a child watcher keyed by PID and leaves "
            "children behind when the event loop's process dies. tether.aio awaits the pidfd "
            "directly and lifelines the child."
        ),
    ),
    Rule(
        code="TET201",
        name="kill",
        flags="os.kill, os.killpg",
        problem="signals a process (group) by a reusable PID number",
        replacement="Pidfd.send_signal() / Child.send_signal()",
        rationale=(
            "Between learning a PID and calling kill() the process can exit, be reaped, and its "
            "number be given to an unrelated process, which then receives the signal (measured: "
            "100 of 100 forced reuses hit the wrong process). A process-group id is a PID "
            "number and is recycled the same way. pidfd_send_signal() on a pidfd can only "
            "reach the process the pidfd was opened for; tether signals a whole group through "
            "the leader's pidfd (PIDFD_SIGNAL_PROCESS_GROUP, kernel 6.9+), and on older kernels "
            "only while that pidfd proves the group still exists."
        ),
    ),
    Rule(
        code="TET202",
        name="pthread-kill",
        flags="signal.pthread_kill",
        problem="signals a thread by a reusable id and runs work in a signal handler",
        replacement="threading.Event or a queue.Queue to wake the thread",
        rationale=(
            "pthread_t values are reused once a thread is joined, and the signal only does "
            "anything through an asynchronous handler. Waking a thread is a job for a "
            "synchronisation primitive, not a signal."
        ),
    ),
    Rule(
        code="TET301",
        name="waitpid",
        flags="os.wait, os.waitpid, os.wait3, os.wait4",
        problem="waits by a reusable PID number (or reaps any child)",
        replacement="Pidfd.wait() / Child.wait()",
        rationale=(
            "waitpid(pid) races with PID reuse, wait()/waitpid(-1) steal other code's children "
            "and their exit status, and timeouts built on them are sleep loops. "
            "waitid(P_PIDFD) on the child's pidfd reaps exactly that child, and poll() on the "
            "pidfd wakes the moment it exits."
        ),
    ),
    Rule(
        code="TET302",
        name="waitid-by-number",
        flags="os.waitid(os.P_PID | os.P_ALL | os.P_PGID, ...)",
        problem="waits by a reusable number instead of a pidfd",
        replacement="os.waitid(os.P_PIDFD, fd, ...) or Pidfd.wait()",
        rationale=(
            "waitid is the right call, but P_PID/P_PGID name the target by a recyclable number "
            "and P_ALL reaps children that belong to other code. P_PIDFD names exactly one "
            "process and cannot be redirected."
        ),
    ),
    Rule(
        code="TET401",
        name="pidfd-open",
        flags="os.pidfd_open",
        problem="turns a reusable PID number into a handle (the number may already be recycled)",
        replacement="the pidfd tether.spawn_lifelined()/run_in_fork() return (Spawned.pidfd)",
        rationale=(
            "pidfd_open(pid) is only race-free when the caller knows the PID cannot have been "
            "reused, i.e. for its own unreaped child; anywhere else it can open a handle on the "
            "wrong process. tether mints pidfds only at creation (clone3(CLONE_PIDFD), or the "
            "child opening a pidfd on itself)."
        ),
    ),
    Rule(
        code="TET501",
        name="signal-handler",
        flags="signal.signal(sig, <Python callable>)",
        problem="installs an asynchronous handler that runs work at an arbitrary bytecode",
        replacement="signal.set_wakeup_fd()/signalfd in a poll loop or loop.add_signal_handler()",
        rationale=(
            "A Python signal handler runs between any two bytecodes of the main thread, in the "
            "middle of whatever it was doing (holding a lock, half-way through a reap), which "
            "is how re-entrancy and lost-wakeup bugs happen. Reading signals synchronously in "
            "the event loop (tether's guard and CLI use signalfd) has none of that. SIG_DFL, "
            "SIG_IGN and signal.default_int_handler are not flagged."
        ),
    ),
    Rule(
        code="TET601",
        name="proc-pid",
        flags=(
            '"/proc/<pid>/..." paths (literals, f-strings, %, .format, +, os.path.join, Path /), '
            'listing /proc (os.listdir/scandir/walk, Path("/proc").iterdir/glob, "/proc/*")'
        ),
        problem="reads process state through a reusable PID number",
        replacement="Pidfd.poll() / Pidfd.wait() / Pidfd.info()",
        rationale=(
            "/proc/<pid> is a name, not a handle: between two reads the process can exit and "
            "the number can be reused, so the text describes whichever process has it now, and "
            "polling it for exit needs a sleep loop. A pidfd becomes readable the moment the "
            "process exits. Walking /proc to find descendants races the same way; tether "
            "contains a tree by process group, cgroup or PID namespace instead. /proc/self, "
            "/proc/thread-self and system files such as /proc/mounts are not flagged."
        ),
    ),
)

RULES_BY_CODE: Final[dict[str, Rule]] = {rule.code: rule for rule in RULES}

_OS_SPAWN = ("spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")
_SUBPROCESS = ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")

#: Qualified names that are flagged wherever they are referenced (called or not): holding a
#: reference to one of these is unambiguous intent to use it.
REFERENCE_RULES: Final[dict[str, str]] = {
    "os.fork": "TET101",
    "os.forkpty": "TET101",
    "pty.fork": "TET101",
    **{f"subprocess.{name}": "TET102" for name in _SUBPROCESS},
    "os.posix_spawn": "TET103",
    "os.posix_spawnp": "TET103",
    **{f"os.{name}": "TET103" for name in _OS_SPAWN},
    "pty.spawn": "TET103",
    "_posixsubprocess.fork_exec": "TET103",
    "os.system": "TET104",
    "os.popen": "TET104",
    "asyncio.create_subprocess_exec": "TET106",
    "asyncio.create_subprocess_shell": "TET106",
    "asyncio.subprocess.create_subprocess_exec": "TET106",
    "asyncio.subprocess.create_subprocess_shell": "TET106",
    "os.kill": "TET201",
    "os.killpg": "TET201",
    "signal.pthread_kill": "TET202",
    "os.wait": "TET301",
    "os.waitpid": "TET301",
    "os.wait3": "TET301",
    "os.wait4": "TET301",
    "os.pidfd_open": "TET401",
}

#: Modules whose name is another spelling of a module above (``posix.fork is os.fork``).
MODULE_SYNONYMS: Final[dict[str, str]] = {"posix": "os"}


class UnknownRuleError(ValueError):
    """A rule code or prefix that matches no rule (in config or on the command line)."""


def expand_codes(codes: Iterable[str], *, source: str) -> frozenset[str]:
    """The rule codes selected by `codes`, each a full code (``TET201``) or a prefix (``TET2``).

    Raises `UnknownRuleError` naming `source` for an entry that selects nothing, so a typo in
    a config never silently disables a rule.
    """
    selected: set[str] = set()
    for entry in codes:
        prefix = entry.strip().upper()
        matched = {code for code in RULES_BY_CODE if code.startswith(prefix)} if prefix else set()
        if not matched:
            known = ", ".join(RULES_BY_CODE)
            raise UnknownRuleError(f"{source}: unknown rule code {entry!r} (known: {known})")
        selected |= matched
    return frozenset(selected)


ALL_CODES: Final[frozenset[str]] = frozenset(RULES_BY_CODE)


def enabled_codes(
    select: Iterable[str] | None, ignore: Iterable[str] | None, *, source: str
) -> frozenset[str]:
    """The codes enabled by `select` (default: all) minus `ignore`, validated."""
    chosen = ALL_CODES if select is None else expand_codes(select, source=source)
    if ignore is not None:
        chosen -= expand_codes(ignore, source=source)
    return chosen
