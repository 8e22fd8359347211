"""`tether run`'s fast path (no argparse) reads every argv it accepts exactly as the full
parser does, and leaves everything else to the full parser (help, errors, abbreviations),
so no option behaves differently for having been read fast."""

from __future__ import annotations

from typing import Any

import pytest

from tether import cli
from tether._cli_fast import fast_run_args

# (argv after "run", whether the fast path takes it)
CASES: list[tuple[list[str], bool]] = [
    (["--", "true"], True),
    (["true"], True),
    (["true", "--timeout", "5"], True),  # options after the command are the command's
    (["--", "--", "x"], True),
    (["--", "-v"], True),
    (["--timeout", "5", "--", "true", "a"], True),
    (["--timeout=0.5", "--grace", "0", "--contain", "group", "--", "true"], True),
    (["--grace=2", "--contain=pidns", "--wait-tree", "sh", "-c", "x"], True),
    (["--timeout", "1", "--timeout", "2", "--", "true"], True),  # the last one counts
    (["--memory", "64M", "--cpus", "1.5", "--pids", "20", "--stats", "--", "true"], True),
    (["--stats", "--", "true"], True),
    (["--contain", "auto", ""], True),
    (["--timeout", "inf", "--", "true"], True),
    # The full parser's: errors, help, abbreviations, values that look like options.
    ([], False),
    (["--"], False),
    (["--timeout"], False),
    (["--timeout", "0", "--", "true"], False),
    (["--timeout", "-1", "--", "true"], False),
    (["--timeout", "x", "--", "true"], False),
    (["--timeout", "nan", "--", "true"], False),
    (["--grace", "-0", "--", "true"], False),
    (["--grace=-1", "--", "true"], False),
    (["--contain", "bogus", "--", "true"], False),
    (["--stats=1", "--", "true"], False),
    (["--time", "5", "--", "true"], False),
    (["-h"], False),
    (["--help", "--", "true"], False),
    (["--version", "--", "true"], False),
    (["-", "true"], False),
    (["--memory", "--stats", "--", "true"], False),
]


def _full(tokens: list[str]) -> dict[str, Any] | None:
    """What the full parser makes of `tether run TOKENS` (main's "--" stripped), or None
    where it reports a usage error or exits (help)."""
    parser, _run_parser = cli._parser()
    try:
        args, extra = parser.parse_known_args(["run", *tokens])
    except (SystemExit, cli._UsageError):
        return None
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if extra or not cmd:
        return None
    out = vars(args)
    out.pop("command")
    out["cmd"] = cmd
    return out


@pytest.mark.parametrize(("tokens", "fast"), CASES, ids=[" ".join(c[0]) or "(none)"
                                                        for c in CASES])
def test_fast_path_reads_argv_as_the_full_parser(tokens: list[str], fast: bool,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    got = fast_run_args(tokens)
    if not fast:
        assert got is None
        return
    assert got is not None
    assert got == _full(tokens)


def test_bad_limits_go_to_the_full_parser(capsys: pytest.CaptureFixture[str]) -> None:
    # Read fast, refused by Limits: the usage error is the full parser's (status 125).
    assert cli.main(["run", "--memory", "12Q", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert err.startswith("usage: tether run")
    assert "tether run: error:" in err
