"""The ``tether`` command: ``run``, ``doctor`` and ``lint``."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Sequence

from tether._kernel.deadline import Deadline
from tether._kernel.errors import Unsupported
from tether._kernel.signalfd import SignalFd
from tether._kernel.spec import SpawnSpec
from tether._tree.child import Child, start_child
from tether._tree.modes import Contain, resolve_mode
from tether._tree.run import DEFAULT_GRACE, end_tree

__all__ = ["main"]

# Signals that `tether run` passes on. The first three end the tree (every member gets them,
# as `timeout` and shells do for a foreground job); the rest go to the program only.
TREE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROGRAM_SIGNALS = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_TETHER_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="tether",
        description="Race-free, orphan-free process management for Linux.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run a command tree that cannot outlive tether",
        description=(
            "Run CMD under a guard. Exit status: the program's code; 128+N if it was killed by "
            "signal N; 124 on timeout; 125 if tether itself failed; 126/127 if CMD cannot be "
            "run / is not found. SIGINT, SIGTERM and SIGHUP sent to tether go to the whole "
            "tree; nothing outlives tether, even if tether is SIGKILLed."
        ),
    )
    run.add_argument("--timeout", type=_positive, metavar="S",
                     help="end the tree after S seconds (SIGTERM, then SIGKILL after --grace)")
    run.add_argument("--grace", type=_non_negative, default=DEFAULT_GRACE, metavar="S",
                     help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_GRACE})")
    run.add_argument("--contain", default="group",
                     choices=["group", "cgroup", "pidns", "auto"],
                     help="containment mode (default: group)")
    run.add_argument("--wait-tree", action="store_true",
                     help="when the program exits, wait for its descendants instead of "
                          "ending them")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    doctor = sub.add_parser("doctor", help="which kernel primitives and modes this machine has")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("lint", help="flag never-use process primitives in Python code",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["lint"]:
        from tether.lint import main as lint_main

        return lint_main(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
        if args.command is None:
            raise _UsageError(parser.format_usage().strip())
        if args.command == "run":
            cmd = list(args.cmd)
            if cmd[:1] == ["--"]:
                cmd = cmd[1:]
            if not cmd:
                raise _UsageError("tether run: error: no command given (tether run -- CMD ...)")
            return _run(cmd, args.timeout, args.grace, args.contain, args.wait_tree)
        if args.command == "doctor":
            from tether._tree.doctor import doctor

            return doctor(as_json=args.json)
    except _UsageError as exc:
        print(parser.format_usage().rstrip(), file=sys.stderr)
        print(exc, file=sys.stderr)
        return 2
    return 2


def _in_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _run(cmd: list[str], timeout: float | None, grace: float, contain: Contain,
         wait_tree: bool) -> int:
    # Block and read our signals as data before the tree exists, so none is lost between
    # spawn and the loop; the spawn path resets the mask in the children.
    foreground = _in_terminal_foreground()
    with SignalFd(TREE_SIGNALS + PROGRAM_SIGNALS) as sigfd:
        try:
            child = start_child(SpawnSpec.build(cmd), resolve_mode(contain), wait_tree=wait_tree,
                                foreground=foreground)
        except OSError as exc:
            return _not_started(exc, cmd[0])
        try:
            with child:
                return _supervise(child, sigfd, timeout, grace)
        finally:
            if foreground:
                _take_terminal_back()


def _not_started(exc: OSError, program: str) -> int:
    """Say why the tree did not start; the exit status that says so (like env(1))."""
    if isinstance(exc, FileNotFoundError | PermissionError):
        print(f"tether: {exc.filename or program}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    print(f"tether: {exc}" if isinstance(exc, Unsupported) else f"tether: {program}: {exc}",
          file=sys.stderr)
    return EXIT_TETHER_FAILED


def _take_terminal_back() -> None:
    """Make our process group the terminal's foreground group again. The guard does this in
    group and cgroup modes; from inside a PID namespace it cannot name our group."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _supervise(child: Child, sigfd: SignalFd, timeout: float | None, grace: float) -> int:
    deadline = Deadline.after(timeout)
    poller = select.poll()
    if child.poll() is None:  # (a short program's end may have come with its start)
        poller.register(child.fileno(), select.POLLIN)
    poller.register(sigfd.fileno(), select.POLLIN)
    while child.poll() is None:
        if deadline.expired:
            end_tree(child, grace)
            return EXIT_TIMEOUT
        poller.poll(deadline.poll_ms())
        for info in sigfd.read_all():
            if info.signo in TREE_SIGNALS:
                child.signal_tree(info.signo)
            else:
                child.send_signal(info.signo)
    exit_ = child.exit
    assert exit_ is not None
    return exit_.shell_status
