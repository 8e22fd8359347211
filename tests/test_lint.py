"""tether lint: every rule fires on its primitive, stays quiet on the safe equivalent, follows
import aliases, and honours noqa, config, output formats and exit statuses."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import tether
from tether.lint import RULES, UnknownRuleError, check_paths, check_source, main


def codes(
    source: str, *, select: list[str] | None = None, ignore: list[str] | None = None
) -> list[str]:
    findings = check_source(textwrap.dedent(source), select=select, ignore=ignore)
    return [finding.code for finding in findings]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# -- every rule fires on its primitive -------------------------------------------------------

SUBPROCESS_FUNCTIONS = (
    "Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput",
)  # fmt: skip

POSITIVE = {
    "os_fork": ("import os\nos.fork()", "TET101"),
    "os_forkpty": ("import os\nos.forkpty()", "TET101"),
    "pty_fork": ("import pty\npty.fork()", "TET101"),
    **{
        f"subprocess_{name}": (f"import subprocess\nsubprocess.{name}(['true'])", "TET102")
        for name in SUBPROCESS_FUNCTIONS
    },
    "os_posix_spawn": ("import os\nos.posix_spawn('/bin/true', [], {})", "TET103"),
    "os_posix_spawnp": ("import os\nos.posix_spawnp('true', [], {})", "TET103"),
    "os_spawnv": ("import os\nos.spawnv(os.P_WAIT, '/bin/true', ['true'])", "TET103"),
    "os_spawnlp": ("import os\nos.spawnlp(os.P_WAIT, 'true', 'true')", "TET103"),
    "os_spawnvpe": ("import os\nos.spawnvpe(os.P_WAIT, 'true', ['true'], {})", "TET103"),
    "pty_spawn": ("import pty\npty.spawn(['sh'])", "TET103"),
    "os_system": ("import os\nos.system('true')", "TET104"),
    "os_popen": ("import os\nos.popen('true')", "TET104"),
    "mp_set_start_method_fork": (
        "import multiprocessing\nmultiprocessing.set_start_method('fork')",
        "TET105",
    ),
    "mp_set_start_method_keyword": (
        "import multiprocessing\nmultiprocessing.set_start_method(method='fork', force=True)",
        "TET105",
    ),
    "mp_get_context_fork": ("import multiprocessing as mp\nmp.get_context('fork')", "TET105"),
    "asyncio_create_subprocess_exec": (
        "import asyncio\nasyncio.create_subprocess_exec('true')",
        "TET106",
    ),
    "os_kill": ("import os\nos.kill(1234, 15)", "TET201"),
    "os_killpg": ("import os\nos.killpg(1234, 15)", "TET201"),
    "signal_pthread_kill": ("import signal\nsignal.pthread_kill(5, 10)", "TET202"),
    "os_wait": ("import os\nos.wait()", "TET301"),
    "os_waitpid": ("import os\nos.waitpid(1234, 0)", "TET301"),
    "os_wait3": ("import os\nos.wait3(0)", "TET301"),
    "os_wait4": ("import os\nos.wait4(1234, 0)", "TET301"),
    "waitid_p_pid": ("import os\nos.waitid(os.P_PID, 1234, os.WEXITED)", "TET302"),
    "waitid_p_all": ("import os\nos.waitid(os.P_ALL, 0, os.WEXITED)", "TET302"),
    "waitid_p_pgid": ("import os\nos.waitid(idtype=os.P_PGID, id=7, options=4)", "TET302"),
    "waitid_literal_p_pid": ("import os\nos.waitid(1, 1234, os.WEXITED)", "TET302"),
    "pidfd_open": ("import os\nos.pidfd_open(1234)", "TET401"),
    "signal_lambda_handler": ("import signal\nsignal.signal(2, lambda s, f: None)", "TET501"),
    "signal_function_handler": (
        "import signal\ndef on_term(s, f): pass\nsignal.signal(signal.SIGTERM, on_term)",
        "TET501",
    ),
    "signal_method_handler": (
        "import signal\nsignal.signal(signal.SIGTERM, handler=self.on_term)",
        "TET501",
    ),
    "proc_literal": ("open('/proc/123/stat')", "TET601"),
    "proc_literal_bare_pid": ("x = '/proc/1'", "TET601"),
    "proc_bytes_literal": ("open(b'/proc/123/stat')", "TET601"),
    "proc_fstring": ("open(f'/proc/{pid}/status')", "TET601"),
    "proc_percent": ("open('/proc/%d/stat' % pid)", "TET601"),
    "proc_format": ("open('/proc/{}/stat'.format(pid))", "TET601"),
    "proc_concatenation": ("open('/proc/' + str(pid) + '/stat')", "TET601"),
    "proc_pathlib_division": (
        "from pathlib import Path\n(Path('/proc') / str(pid) / 'stat').read_text()",
        "TET601",
    ),
    "proc_pathlib_arguments": ("import pathlib\npathlib.Path('/proc', str(pid))", "TET601"),
    "proc_os_path_join": ("import os\nos.path.join('/proc', str(pid), 'stat')", "TET601"),
    "proc_listdir": ("import os\nos.listdir('/proc')", "TET601"),
    "proc_path_iterdir": ("from pathlib import Path\nPath('/proc').iterdir()", "TET601"),
    "proc_glob_every_pid": ("import glob\nglob.glob('/proc/[0-9]*/stat')", "TET601"),
}


@pytest.mark.parametrize(("source", "code"), POSITIVE.values(), ids=POSITIVE.keys())
def test_rule_fires_on_its_primitive(source: str, code: str) -> None:
    assert codes(source) == [code]


def test_every_rule_has_a_positive_example() -> None:
    assert {code for _, code in POSITIVE.values()} == {rule.code for rule in RULES}


# -- and stays quiet on the safe equivalent --------------------------------------------------

NEGATIVE = {
    "method_named_kill": "import os\nchild.kill()\nself.wait()\nproc.send_signal(9)",
    "local_variable_named_kill": "import os\nkill = 3\nprint(kill)",
    "same_name_other_module": "from mylib import kill, fork\nkill(1)\nfork()",
    "relative_import": "from .os import kill\nkill(1, 2)",
    "os_not_imported": "os.kill(1, 2)",
    "parameter_shadows_module": "import os\ndef f(os):\n    os.kill(1, 2)",
    "waitid_p_pidfd": "import os\nos.waitid(os.P_PIDFD, fd, os.WEXITED)",
    "waitid_p_pidfd_imported": "from os import P_PIDFD, waitid\nwaitid(P_PIDFD, fd, 4)",
    "pidfd_send_signal": "import signal\nsignal.pidfd_send_signal(fd, signal.SIGTERM)",
    "subprocess_types_and_errors": (
        "import subprocess\nsubprocess.PIPE\nsubprocess.CalledProcessError\n"
        "subprocess.TimeoutExpired\nsubprocess.CompletedProcess"
    ),
    "annotation_naming_popen": (
        "import subprocess\ndef f(p: subprocess.Popen[bytes]) -> subprocess.Popen[str]: ...\n"
        "x: subprocess.Popen[bytes] | None = None"
    ),
    "signal_sig_ign": "import signal\nsignal.signal(s, signal.SIG_IGN)",
    "signal_sig_dfl": "from signal import SIG_DFL, signal\nsignal(15, SIG_DFL)",
    "signal_default_int_handler": "import signal\nsignal.signal(2, signal.default_int_handler)",
    "signal_restores_saved_handler": (
        "import signal\nold = signal.signal(2, signal.SIG_IGN)\nsignal.signal(2, old)"
    ),
    "signal_restores_getsignal_attribute": (
        "import signal\nself._saved = signal.getsignal(2)\nsignal.signal(2, self._saved)"
    ),
    "mp_spawn_context": "import multiprocessing as mp\nmp.get_context('spawn')",
    "proc_self": "open('/proc/self/fd')\nopen('/proc/self/status')",
    "proc_thread_self": "open('/proc/thread-self/comm')",
    "proc_system_files": "open('/proc/sys/kernel/pid_max')\nopen('/proc/mounts')",
    "proc_self_mountinfo": "open('/proc/self/mountinfo')",
    "proc_own_pid_fstring": "import os\nopen(f'/proc/{os.getpid()}/fd')",
    "proc_own_pid_percent": "import os\nopen('/proc/%d/fd' % os.getpid())",
    "proc_own_pid_format": "import os\nopen('/proc/{pid}/statm'.format(pid=os.getpid()))",
    "proc_pathlib_self": "from pathlib import Path\nPath('/proc') / 'self' / 'fd'",
    "proc_join_self": "import os\nos.path.join('/proc', 'self', 'fd')",
    "proc_in_docstring": '"""Reads /proc/123/stat, the old way."""',
    "listdir_elsewhere": "import os\nos.listdir('/proc/self/fd')",
}


@pytest.mark.parametrize("source", NEGATIVE.values(), ids=NEGATIVE.keys())
def test_safe_equivalent_is_not_flagged(source: str) -> None:
    assert codes(source) == []


# -- aliases and references ------------------------------------------------------------------

ALIASES = {
    "import_as": "import os as o\no.kill(1, 2)",
    "from_import_as": "from os import kill as k\nk(1, 2)",
    "from_import": "from os import kill\nkill(1, 2)",
    "dotted_import": "import os.path\nos.kill(1, 2)",
    "dotted_import_as": "import os.path as osp\nosp.join('a')\nimport os\nos.kill(1, 2)",
    "posix_module": "import posix\nposix.kill(1, 2)",
    "star_import": "from os import *\nkill(1, 2)",
    "getattr": "import os\ngetattr(os, 'kill')(1, 2)",
    "import_inside_function": "def f():\n    import os\n    os.kill(1, 2)",
    "import_after_use": "def f():\n    os.kill(1, 2)\nimport os",
    "import_in_try": (
        "try:\n    import os\nexcept ImportError:\n    pass\ndef f():\n    os.kill(1, 2)"
    ),
    "import_fallback_to_none_keeps_the_import": (
        "try:\n    import os\nexcept ImportError:\n    os = None\nos.kill(1, 2)"
    ),
    "class_method_named_kill_does_not_hide_import": (
        "from os import kill\nclass C:\n    def kill(self): pass\nkill(1, 2)"
    ),
}


@pytest.mark.parametrize("source", ALIASES.values(), ids=ALIASES.keys())
def test_alias_is_resolved(source: str) -> None:
    assert codes(source) == ["TET201"]


def test_module_alias_is_resolved() -> None:
    assert codes("import subprocess as sp\nsp.run(['x'])") == ["TET102"]


def test_from_import_of_a_class_is_resolved() -> None:
    assert codes("from subprocess import Popen\nPopen(['x'])") == ["TET102"]


def test_reference_without_call_is_flagged_at_the_reference() -> None:
    findings = check_source("import os\nf = os.fork\nf()\n")
    assert [(f.line, f.col, f.code) for f in findings] == [(2, 5, "TET101")]


def test_local_rebinding_hides_the_import_in_that_function() -> None:
    source = "from os import kill\ndef f(child):\n    kill = child.kill\n    kill()\nkill(1, 2)\n"
    assert [(f.line, f.code) for f in check_source(source)] == [(5, "TET201")]


# -- findings --------------------------------------------------------------------------------


def test_finding_prints_as_path_line_col_code_message() -> None:
    (finding,) = check_source("import os\n\nos.kill(1, 2)\n", "pkg/mod.py")
    assert str(finding) == (
        "pkg/mod.py:3:1: TET201 os.kill signals a process (group) by a reusable PID number; "
        "use Pidfd.send_signal() / Child.send_signal()"
    )


def test_column_counts_characters_not_utf8_bytes() -> None:
    (finding,) = check_source("import os\nx = 'ééé'; os.kill(1, 2)\n")
    assert finding.col == 12


def test_every_message_names_the_tether_replacement() -> None:
    for rule in RULES:
        assert f"; use {rule.replacement}" in rule.message("x")
        assert rule.rationale


def test_findings_are_sorted_by_position() -> None:
    source = "import os\nos.wait()\nos.kill(1, 2); os.fork()\n"
    assert [(f.line, f.col) for f in check_source(source)] == [(2, 1), (3, 1), (3, 16)]


def test_check_source_raises_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        check_source("def (:\n")


# -- noqa ------------------------------------------------------------------------------------


def test_noqa_with_the_code_suppresses_it() -> None:
    assert codes("import os\nos.kill(1, 2)  # noqa: TET201\n") == []


def test_noqa_with_another_code_does_not_suppress() -> None:
    assert codes("import os\nos.kill(1, 2)  # noqa: TET101\n") == ["TET201"]


def test_bare_noqa_suppresses_everything_on_the_line() -> None:
    assert codes("import os\nos.kill(os.fork(), 2)  # noqa\n") == []


def test_noqa_with_codes_and_trailing_reason() -> None:
    source = "import os\nos.kill(os.fork(), 2)  # noqa: TET101, TET201  L0: own child, see above\n"
    assert codes(source) == []


def test_noqa_keyword_is_case_insensitive() -> None:
    assert codes("import os\nos.kill(1, 2)  # NOQA:TET201\n") == []


def test_noqa_without_codes_after_colon_suppresses_nothing() -> None:
    assert codes("import os\nos.kill(1, 2)  # noqa: because I said so\n") == ["TET201"]


def test_noqa_applies_only_to_its_own_line() -> None:
    assert codes("import os  # noqa\nos.kill(1, 2)\n") == ["TET201"]


# -- selection -------------------------------------------------------------------------------


def test_select_prefix_keeps_only_that_group() -> None:
    assert codes("import os\nos.kill(1, 2)\nos.fork()\n", select=["TET2"]) == ["TET201"]


def test_ignore_drops_a_code() -> None:
    assert codes("import os\nos.kill(1, 2)\nos.fork()\n", ignore=["TET201"]) == ["TET101"]


def test_unknown_code_in_select_raises() -> None:
    with pytest.raises(UnknownRuleError, match="TET999"):
        check_source("", select=["TET999"])


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_clean_file_exits_0_and_prints_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "ok.py", "import os\nos.getpid()\n")
    assert main(["ok.py"]) == 0
    assert capsys.readouterr().out == ""


def test_findings_exit_1_sorted_across_files(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "b.py", "import os\nos.fork()\n")
    write(project / "a.py", "import os\n\nos.kill(1, 2)\n")
    assert main(["b.py", "a.py"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0:2] for line in lines] == [
        ["a.py:3:1:", "TET201"],
        ["b.py:2:1:", "TET101"],
    ]


def test_json_format_lists_path_line_col_code_message(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "a.py", "import os\nos.kill(1, 2)\n")
    assert main(["--format", "json", "a.py"]) == 1
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["path"] == "a.py"
    assert (entry["line"], entry["col"], entry["code"]) == (2, 1, "TET201")
    assert "Pidfd.send_signal()" in entry["message"]


def test_json_format_when_clean_is_an_empty_list(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "a.py", "x = 1\n")
    assert main(["--format", "json", "a.py"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_syntax_error_exits_2_and_other_files_are_still_reported(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "bad.py", "def (:\n")
    write(project / "good.py", "import os\nos.kill(1, 2)\n")
    assert main(["bad.py", "good.py"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("good.py:2:1: TET201 ")
    assert err.startswith("bad.py: error: syntax error")


def test_missing_path_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope.py"]) == 2
    assert capsys.readouterr().err.startswith("nope.py: error: cannot read")


def test_directory_is_walked_for_python_files(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "pkg" / "sub" / "mod.py", "import os\nos.fork()\n")
    write(project / "pkg" / "notes.txt", "os.fork()\n")
    assert main(["pkg"]) == 1
    assert capsys.readouterr().out.startswith("pkg/sub/mod.py:2:1: TET101 ")


@pytest.mark.parametrize("directory", [".git", "__pycache__", "build", "myenv", "x.egg-info"])
def test_directory_walk_skips_vcs_caches_builds_and_venvs(project: Path, directory: str) -> None:
    write(project / directory / "mod.py", "import os\nos.fork()\n")
    if directory == "myenv":
        write(project / directory / "pyvenv.cfg", "home = /usr\n")
    assert check_paths(["."]).findings == []


def test_cli_select_and_ignore(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project / "a.py", "import os\nos.kill(1, 2)\nos.fork()\nos.wait()\n")
    assert main(["--select", "TET1,TET3", "--ignore", "TET301", "a.py"]) == 1
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["TET101"]


def test_cli_unknown_select_code_exits_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "a.py", "x = 1\n")
    assert main(["--select", "TET999", "a.py"]) == 2
    assert "TET999" in capsys.readouterr().err


def test_bad_usage_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--format", "xml"]) == 2


def test_list_rules_prints_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-rules"]) == 0
    out = capsys.readouterr().out
    assert all(rule.code in out for rule in RULES)


def test_explain_prints_the_rationale(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--explain", "TET201"]) == 0
    assert "100 of 100 forced reuses" in capsys.readouterr().out


def test_explain_unknown_code_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--explain", "TET999"]) == 2


def test_python_m_tether_lint_runs_main(project: Path) -> None:
    write(project / "a.py", "import os\nos.fork()\n")
    result = tether.run([sys.executable, "-m", "tether.lint", "a.py"], cwd=project,
                        capture_output=True, text=True)
    assert result.returncode == 1
    assert "a.py:2:1: TET101" in result.stdout


# -- configuration ---------------------------------------------------------------------------

FORK_AND_KILL = "import os\nos.fork()\nos.kill(1, 2)\n"


def lint_codes(*paths: str) -> list[str]:
    return [finding.code for finding in check_paths(paths).findings]


def test_config_select(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nselect = ["TET2"]\n')
    write(project / "a.py", FORK_AND_KILL)
    assert lint_codes("a.py") == ["TET201"]


def test_config_ignore(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nignore = ["TET201"]\n')
    write(project / "a.py", FORK_AND_KILL)
    assert lint_codes("a.py") == ["TET101"]


def test_config_per_file_ignores(project: Path) -> None:
    write(
        project / "pyproject.toml",
        '[tool.tether.lint]\nper-file-ignores = { "tests/*" = ["TET101"] }\n',
    )
    write(project / "tests" / "test_a.py", FORK_AND_KILL)
    write(project / "src" / "a.py", FORK_AND_KILL)
    assert lint_codes("src", "tests") == ["TET101", "TET201", "TET201"]


def test_config_exclude(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nexclude = ["fixtures"]\n')
    write(project / "fixtures" / "bad.py", FORK_AND_KILL)
    write(project / "fixtures2" / "bad.py", FORK_AND_KILL)
    assert lint_codes(".") == ["TET101", "TET201"]


def test_config_exclude_applies_to_files_named_explicitly(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nexclude = ["gen_*.py"]\n')
    write(project / "gen_a.py", FORK_AND_KILL)
    assert lint_codes("gen_a.py") == []


def test_config_exclude_of_a_directory_applies_to_its_files_named_explicitly(
    project: Path,
) -> None:
    # pre-commit passes every changed file by name: vendor/v.py must stay excluded.
    write(project / "pyproject.toml", '[tool.tether.lint]\nexclude = ["vendor", "gen/*"]\n')
    write(project / "vendor" / "v.py", FORK_AND_KILL)
    write(project / "vendor" / "deep" / "w.py", FORK_AND_KILL)
    write(project / "gen" / "sub" / "g.py", FORK_AND_KILL)
    write(project / "vendored" / "x.py", FORK_AND_KILL)
    assert lint_codes("vendor/v.py", "vendor/deep/w.py", "gen/sub/g.py") == []
    assert lint_codes("vendored/x.py") == ["TET101", "TET201"]


def test_command_line_select_replaces_config_select(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nselect = ["TET2"]\n')
    write(project / "a.py", FORK_AND_KILL)
    assert [f.code for f in check_paths(["a.py"], select=["TET1"]).findings] == ["TET101"]


def test_config_is_found_walking_up_from_the_checked_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proj" / "pyproject.toml", '[tool.tether.lint]\nignore = ["TET101"]\n')
    write(tmp_path / "proj" / "pkg" / "deep" / "a.py", FORK_AND_KILL)
    monkeypatch.chdir(tmp_path)
    assert lint_codes("proj/pkg/deep/a.py") == ["TET201"]


def test_config_is_found_walking_up_from_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proj" / "pyproject.toml", '[tool.tether.lint]\nignore = ["TET101"]\n')
    write(tmp_path / "elsewhere" / "a.py", FORK_AND_KILL)
    (tmp_path / "proj" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    assert lint_codes(str(tmp_path / "elsewhere" / "a.py")) == ["TET201"]


def test_pyproject_without_the_table_is_skipped_for_one_further_up(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nignore = ["TET101"]\n')
    write(project / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n')
    write(project / "pkg" / "a.py", FORK_AND_KILL)
    assert lint_codes("pkg/a.py") == ["TET201"]


def test_unknown_code_in_config_exits_2_naming_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nignore = ["TET999"]\n')
    write(project / "a.py", FORK_AND_KILL)
    assert main(["a.py"]) == 2
    err = capsys.readouterr().err
    assert "pyproject.toml: error:" in err
    assert "'TET999'" in err


def test_unknown_code_in_per_file_ignores_exits_2(project: Path) -> None:
    write(
        project / "pyproject.toml",
        '[tool.tether.lint]\nper-file-ignores = { "a.py" = ["TET10X"] }\n',
    )
    write(project / "a.py", FORK_AND_KILL)
    assert main(["a.py"]) == 2


def test_unknown_config_key_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(project / "pyproject.toml", '[tool.tether.lint]\nignores = ["TET101"]\n')
    write(project / "a.py", FORK_AND_KILL)
    assert main(["a.py"]) == 2
    assert "ignores" in capsys.readouterr().err


def test_malformed_pyproject_exits_2(project: Path) -> None:
    write(project / "pyproject.toml", "[tool.tether.lint\n")
    write(project / "a.py", FORK_AND_KILL)
    assert main(["a.py"]) == 2


# -- docs ------------------------------------------------------------------------------------


def test_docs_rules_table_lists_every_rule() -> None:
    docs = (Path(__file__).parent.parent / "README.md").read_text()
    assert all(f"`{rule.code}`" in docs for rule in RULES)
