"""The ``tether lint`` command line: arguments in, findings out, exit status 0 / 1 / 2.

Exit status: 0 clean, 1 findings, 2 a usage or config error or a file that could not be read
or parsed (the other files are still checked and their findings still printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Final, TextIO

from tether.lint._config import ConfigError
from tether.lint._project import check_paths
from tether.lint._rules import RULES, RULES_BY_CODE, UnknownRuleError

EXIT_CLEAN: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_ERROR: Final = 2


def _codes(value: str) -> list[str]:
    return [code for code in (part.strip() for part in value.split(",")) if code]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether lint",
        description=(
            "Flag the process primitives tether's doctrine never uses (fork, subprocess, "
            "kill/waitpid by number, pidfd_open, async signal handlers, /proc/<pid>)."
        ),
        epilog="Exit status: 0 clean, 1 findings, 2 usage/config/file errors.",
    )
    parser.add_argument(
        "paths", nargs="*", default=["."], metavar="PATH", help="files or directories (default: .)"
    )
    parser.add_argument(
        "--select", type=_codes, metavar="CODES", help="comma-separated codes or prefixes to run"
    )
    parser.add_argument(
        "--ignore", type=_codes, metavar="CODES", help="comma-separated codes or prefixes to skip"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--list-rules", action="store_true", help="print every rule and exit")
    parser.add_argument("--explain", metavar="CODE", help="print one rule's rationale and exit")
    return parser


def _list_rules(out: TextIO) -> None:
    for rule in RULES:
        out.write(f"{rule.code}  {rule.name:<22} {rule.flags}\n")
        out.write(f"{'':8}{'':23}-> {rule.replacement}\n")


def _explain(code: str, out: TextIO) -> bool:
    rule = RULES_BY_CODE.get(code.strip().upper())
    if rule is None:
        return False
    out.write(
        f"{rule.code} ({rule.name})\n\n"
        f"Flags:   {rule.flags}\n"
        f"Use:     {rule.replacement}\n\n"
        f"{rule.rationale}\n"
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tether lint`` with `argv` (default: ``sys.argv[1:]``) and return the exit status.

    Printing only: the checked files are parsed, never imported or executed.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits on --help (0) and on bad usage (2); a library entry point returns.
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_ERROR
    if args.list_rules:
        _list_rules(sys.stdout)
        return EXIT_CLEAN
    if args.explain is not None:
        if _explain(args.explain, sys.stdout):
            return EXIT_CLEAN
        sys.stderr.write(f"tether lint: error: unknown rule code {args.explain!r}\n")
        return EXIT_ERROR
    try:
        report = check_paths(args.paths, select=args.select, ignore=args.ignore)
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")  # already "<pyproject.toml>: error: ..."
        return EXIT_ERROR
    except UnknownRuleError as error:
        sys.stderr.write(f"tether lint: error: {error}\n")
        return EXIT_ERROR
    if args.format == "json":
        json.dump(
            [
                {
                    "path": f.path,
                    "line": f.line,
                    "col": f.col,
                    "code": f.code,
                    "message": f.message,
                }
                for f in report.findings
            ],
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.writelines(f"{finding}\n" for finding in report.findings)
    sys.stderr.writelines(f"{error}\n" for error in report.errors)
    if report.errors:
        return EXIT_ERROR
    return EXIT_FINDINGS if report.findings else EXIT_CLEAN
