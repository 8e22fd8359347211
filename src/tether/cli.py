"""The ``tether`` command: ``run``, ``doctor`` and ``lint``.

The one rule this module owns: the exit status says who failed. The program's own status
passes through (128+N for signal N); 124 is a timeout; 125 is tether itself (a usage error,
a mode this machine lacks, a guard that died); 126/127 are only ever the program that could
not be run / was not found, never an internal file of tether's (like env(1) and timeout(1)).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from tether import __version__
from tether._cli_fast import CONTAIN_CHOICES, DEFAULT_CONTAIN, fast_run_args, number
from tether._kernel.cgroup import ROOT_ENV
from tether._kernel.deadline import Deadline
from tether._kernel.errors import Unsupported
from tether._kernel.signalfd import SignalFd
from tether._kernel.spec import SpawnSpec
from tether._tree.child import Child, start_child
from tether._tree.modes import Contain, resolve_mode
from tether._tree.run import DEFAULT_GRACE

if TYPE_CHECKING:  # imported where a path needs them (start-up)
    import argparse

    from tether._kernel.limits import Limits

__all__ = ["command", "main"]

# Signals that `tether run` passes on. The first three end the tree (every member gets them,
# as `timeout` and shells do for a foreground job); the rest go to the program only.
TREE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROGRAM_SIGNALS = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_TETHER_FAILED = 125  # usage errors included, as timeout(1) and env(1)
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

class _UsageError(Exception):
    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


def _positive(text: str) -> float:
    return _checked_number(text, zero_ok=False)


def _non_negative(text: str) -> float:
    return _checked_number(text, zero_ok=True)


def _checked_number(text: str, *, zero_ok: bool) -> float:
    """The full parser's check of a number (its ``type=``), with its messages."""
    import argparse

    value = number(text, zero_ok=zero_ok)
    if value is not None:
        return value
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    raise argparse.ArgumentTypeError(f"must be {'>=' if zero_ok else '>'} 0: {text!r}")


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser, and run's (for run's own usage errors)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            # The usage of the (sub)command that failed, not the top level's.
            raise _UsageError(self.format_usage(), f"{self.prog}: error: {message}")

    parser = _Parser(
        prog="tether",
        description="Race-free, orphan-free process management for Linux.",
        epilog="Exit status 125: tether itself failed (usage errors included).",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run a command tree that cannot outlive tether",
        description=(
            "Run CMD under a guard. Exit status: the program's code; 128+N if it was killed by "
            "signal N; 124 on timeout; 125 if tether itself failed (usage errors included); "
            "126/127 if CMD cannot be run / is not found. SIGINT, SIGTERM and SIGHUP sent to "
            "tether go to the whole tree, followed by SIGKILL after --grace seconds if the "
            "tree is still there (at once on a second such signal). With the default "
            "--contain auto, nothing outlives tether, even if tether is SIGKILLed; "
            "in group mode a daemon that calls setsid() escapes."
        ),
    )
    run.add_argument("--timeout", type=_positive, metavar="S",
                     help="end the tree after S seconds (SIGTERM, then SIGKILL after --grace)")
    run.add_argument("--grace", type=_non_negative, default=DEFAULT_GRACE, metavar="S",
                     help="seconds from a SIGTERM/SIGINT/SIGHUP to the tree (forwarded, or "
                          f"on timeout) to SIGKILL (default {DEFAULT_GRACE})")
    run.add_argument("--contain", default=DEFAULT_CONTAIN,
                     choices=list(CONTAIN_CHOICES),
                     help="containment mode (default: auto, the strongest this machine has: "
                          "pidns as root, then cgroup, then pidns in a user namespace, "
                          "then group)")
    run.add_argument("--wait-tree", action="store_true",
                     help="when the program exits, wait for its descendants instead of "
                          "ending them")
    run.add_argument("--memory", metavar="SIZE",
                     help="memory limit of the whole tree (512M, 2G; past it the OOM killer "
                          "acts inside the tree only)")
    run.add_argument("--cpus", metavar="N", help="CPU limit of the whole tree (1.5: one and "
                                                 "a half CPUs' worth of time)")
    run.add_argument("--pids", metavar="N", help="most processes the tree may have at once")
    run.add_argument("--stats", action="store_true",
                     help="at exit, one line on stderr: the tree's CPU, peak memory, peak "
                          "process count (needs cgroup or pidns containment)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    doctor = sub.add_parser("doctor", help="which kernel primitives and modes this machine has")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    ps = sub.add_parser("ps", help="the live trees tether contains here (in its cgroups)")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("lint", help="flag never-use process primitives in Python code",
                   add_help=False)
    return parser, run


def command() -> NoReturn:
    """The ``tether`` command as a process (the console script, ``python -m tether``):
    :func:`main`, then the exit, without the interpreter's teardown of every module and
    object (milliseconds; more than all of ``tether run``'s own work after its imports).
    Nothing of tether's needs that teardown once ``main`` has returned: every tree has ended
    and its guard is reaped, and our fds close with the process. What a normal exit does
    that matters is done first: atexit handlers (reaper, v1_pool) run and stdio is
    flushed; if the flush fails (a closed pipe), the interpreter's own exit reports it."""
    status = main()
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(status)
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["lint"]:
        from tether.lint import main as lint_main

        return lint_main(args_list[1:])
    fast = fast_run_args(args_list[1:]) if args_list[:1] == ["run"] else None
    if fast is not None:
        try:
            limits = _limits(fast["memory"], fast["cpus"], fast["pids"], fast["stats"])
        except (ValueError, TypeError):
            pass  # the full parser says why, with run's usage
        else:
            return _run(fast["cmd"], fast["timeout"], fast["grace"], fast["contain"],
                        fast["wait_tree"], limits, fast["stats"])
    parser, run_parser = _parser()
    try:
        args, extra = parser.parse_known_args(args_list)
        if extra:  # reported by the command they were given to, with its usage
            (run_parser if args.command == "run" else parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            raise _UsageError(parser.format_usage(),
                              "tether: error: a command is required (run, doctor, ps or lint)")
        if args.command == "doctor":
            from tether._tree.doctor import doctor

            return doctor(as_json=args.json)
        if args.command == "ps":
            from tether._tree.ps import ps

            return ps(as_json=args.json)
        cmd = list(args.cmd)
        if cmd[:1] == ["--"]:
            cmd = cmd[1:]
        if not cmd:
            run_parser.error("no command given (tether run -- CMD ...)")
        try:
            limits = _limits(args.memory, args.cpus, args.pids, args.stats)
        except (ValueError, TypeError) as exc:
            run_parser.error(str(exc))
    except SystemExit as exit_request:  # --help, --version: argparse printed them
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_TETHER_FAILED
    except _UsageError as exc:
        sys.stderr.write(exc.usage)
        print(exc, file=sys.stderr)
        return EXIT_TETHER_FAILED
    return _run(cmd, args.timeout, args.grace, args.contain, args.wait_tree, limits, args.stats)


def _limits(memory: str | None, cpus: str | None, pids: str | None,
            stats: bool) -> Limits | None:
    """--memory/--cpus/--pids as Limits (ValueError or TypeError if bad); --stats alone
    accounts; None without either."""
    if memory is None and cpus is None and pids is None and not stats:
        return None
    from tether._kernel.limits import Limits

    if memory is None and cpus is None and pids is None:
        return Limits()
    return Limits.parse(memory=memory, cpus=cpus, pids=pids)


def _report(child: Child, stats: bool) -> None:
    """Say an OOM kill (and, with --stats, the tree's usage) on stderr, once it ended."""
    exit_ = child.exit
    if exit_ is not None and (exit_.oom_killed or exit_.ended_by == "timeout"):
        print(f"tether: {child.args[0]}: {exit_}", file=sys.stderr)
    if stats:
        print(f"tether: {child.args[0]}: {child.usage()}", file=sys.stderr)


def _in_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _on_controlling_terminal() -> bool:
    """fd 0 is our controlling terminal (tcgetpgrp works only on that one): a shell's job,
    in the foreground or not, so job control applies."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) > 0
    except OSError:
        return False


def _run(cmd: list[str], timeout: float | None, grace: float, contain: Contain,
         wait_tree: bool, limits: Limits | None = None, stats: bool = False) -> int:
    # Block and read our signals as data before the tree exists, so none is lost between
    # spawn and the loop; the spawn path resets the mask in the children.
    # On a terminal, tether is the shell's job and the program runs in a group of its own:
    # the guard reports the program's stops, and SIGCONT (fg, bg) is ours to pass on.
    job_control = _on_controlling_terminal()
    foreground = job_control and _in_terminal_foreground()
    signals = TREE_SIGNALS + PROGRAM_SIGNALS + ((signal.SIGCONT,) if job_control else ())
    with SignalFd(signals) as sigfd:
        try:
            child = start_child(SpawnSpec.build(cmd, limits=limits), resolve_mode(contain),
                                wait_tree=wait_tree, foreground=foreground,
                                job_control=job_control)
        except OSError as exc:
            return _not_started(exc, cmd[0])
        try:
            with child:
                status = _supervise(child, sigfd, timeout, grace)
            _report(child, stats)
            return status
        except ChildProcessError as exc:
            # The guard died after the start (killed, OOM): tether could not watch the tree
            # to its end; the tree was ended parent-side (see Guard).
            print(f"tether: {_message(exc)}", file=sys.stderr)
            return EXIT_TETHER_FAILED
        finally:
            if job_control:
                _take_terminal_back(child)


def _message(exc: OSError) -> str:
    """An OSError as a person reads it: its text and the file it names, no "[Errno N]"."""
    text = exc.strerror or str(exc)
    return text if exc.filename is None else f"{exc.filename}: {text}"


def _not_started(exc: OSError, program: str) -> int:
    """Say why the tree did not start; the exit status that says so (like env(1)).

    126/127 only when the *program* could not be run (the error names it); a file of
    tether's own that is missing or refused is tether's failure (125)."""
    if isinstance(exc, FileNotFoundError | PermissionError) and exc.filename == program:
        text = exc.strerror
        if isinstance(exc, PermissionError) and os.path.isdir(program):
            text = os.strerror(errno.EISDIR)  # as shells say it
        print(f"tether: {program}: {text}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    if isinstance(exc, Unsupported):
        text = _message(exc)
        root = os.environ.get(ROOT_ENV)
        if root and root in text:
            text += f" (the cgroup root comes from the environment: {ROOT_ENV}={root})"
    elif exc.filename == program:
        text = _message(exc)  # the program failed at another stage than exec (E2BIG, ...)
    else:
        text = f"{program}: {_message(exc)}"
    print(f"tether: {text}", file=sys.stderr)
    return EXIT_TETHER_FAILED


def _set_terminal_group(pgid: int) -> None:
    """Make ``pgid`` the terminal's foreground group (SIGTTOU blocked: we may be in the
    background when we do it, and the tty layer treats a blocked SIGTTOU as ignored)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(0, pgid)
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _take_terminal_back(child: Child) -> None:
    """Once the tree has ended: if the terminal is still the program's group's, make it our
    group's again. The guard does this in group and cgroup modes when it gave the terminal;
    from inside a PID namespace it cannot name our group, and after a `fg` it was us who
    gave it. Never taken from anyone else (a shell that has it while we run in the
    background keeps it)."""
    try:
        if os.tcgetpgrp(0) == child.pid:
            _set_terminal_group(os.getpgrp())
    except OSError:
        pass


def _stop_with_the_program(sig: int) -> None:
    """The program was stopped by ``sig`` (Ctrl-Z's SIGTSTP, SIGTTIN, SIGSTOP): stop ourselves
    with the same signal, so that our shell sees its job stop, says why as it would without
    tether, and gets its prompt back. The guard keeps watching the lifeline meanwhile. We go
    on when the shell continues the job (SIGCONT, read from the signalfd)."""
    stop = sig if sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU) else signal.SIGSTOP
    signal.raise_signal(stop)


def _hand_over_terminal(child: Child) -> bool:
    """If our job is the terminal's foreground, give the terminal to the program's group;
    True if that group has it now (never taken from anyone but us)."""
    if not _in_terminal_foreground():
        return False
    _set_terminal_group(child.pid)
    try:
        return os.tcgetpgrp(0) == child.pid
    except OSError:
        return False


def _continue_the_program(child: Child) -> None:
    """The shell continued our job (fg or bg): if it is in the foreground now, the program's
    group gets the terminal first (else its first read would stop it again with SIGTTIN);
    then the whole tree goes on. The group is named by number: the program leads it and is
    alive (stopped), so that number cannot have been handed out again."""
    if child.poll() is not None:
        return
    _hand_over_terminal(child)
    child.signal_tree(signal.SIGCONT)


def _supervise(child: Child, sigfd: SignalFd, timeout: float | None, grace: float) -> int:
    """Pass signals on and wait for the tree to end. Ending it (a forwarded SIGINT/SIGTERM/
    SIGHUP, or the timeout's SIGTERM) starts the --grace clock; when it runs out, or at a
    second such signal, the whole tree gets SIGKILL: a tree that ignores signals cannot
    keep tether running."""
    deadline = Deadline.after(timeout)
    kill_at: Deadline | None = None  # set once the tree is being ended
    killed = timed_out = False
    stops_seen = 0
    poller = select.poll()
    if child.poll() is None:  # (a short program's end may have come with its start)
        poller.register(child.fileno(), select.POLLIN)
    poller.register(sigfd.fileno(), select.POLLIN)
    while child.poll() is None:
        stops = child.stops  # (poll() has just read the guard's reports)
        if len(stops) != stops_seen:
            stops_seen = len(stops)
            if stops[-1] in (signal.SIGTTIN, signal.SIGTTOU) and _hand_over_terminal(child):
                # Our job is in the foreground already (the program read the terminal before
                # a `fg` had handed it over): it has the terminal now, so it goes on.
                child.signal_tree(signal.SIGCONT)
            else:
                _stop_with_the_program(stops[-1])  # returns once continued (SIGCONT below)
        if kill_at is None and deadline.expired:
            timed_out = True
            child._end_by("timeout")
            child.terminate()
            kill_at = Deadline.after(grace)
        if not killed and kill_at is not None and kill_at.expired:
            child.kill()
            killed = True
        wake = deadline if kill_at is None else kill_at
        poller.poll(None if killed else wake.poll_ms())
        for info in sigfd.read_all():
            if info.signo == signal.SIGCONT:
                _continue_the_program(child)
            elif info.signo not in TREE_SIGNALS:
                child.send_signal(info.signo)
            elif kill_at is None:
                child.signal_tree(info.signo)
                kill_at = Deadline.after(grace)
            elif not killed:
                child.kill()
                killed = True
    if timed_out:
        return EXIT_TIMEOUT
    exit_ = child.exit
    assert exit_ is not None
    return exit_.shell_status
