"""Bad-input fuzzing: hypothesis generates spawn specs (argv with NUL, empty, non-str items;
env with '=' and NUL; cwd missing or a file; fds negative, closed, huge; stdio of every
kind; containment modes valid and not; timeouts negative, NaN, infinite, huge) for
``spawn_lifelined``, ``spawn`` and ``run``.

The guarantee under attack: a spec either runs correctly (``true`` exits 0, ``false`` 1) or
is refused with a typed error: TypeError, ValueError, an OSError subclass
(FileNotFoundError, PermissionError, ..., tether.Unsupported), or TimeoutExpired for a
timeout that expired; and nothing leaks: after each example this process has the same fds,
no descendant (subreaper: ECHILD), and no tree cgroup directory.

Every example is judged and the violations are *collected* (one finding must not hide the
next); the test fails listing each distinct violation with its smallest example. The same
checker must flag a deliberately broken spawner (leaks an fd on rejected input, and reads
argv[0] before validating it).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tether
from oracle import open_fds, reap_until
from tether._kernel import cgroup_ahead

from ._harness import Pen, record, size


class Token(str):
    """A placeholder in a generated spec for a resource made fresh for each example."""

    __slots__ = ()


OPEN_FD, CLOSED_FD, FILE_OBJ = Token("<open fd>"), Token("<closed fd>"), Token("<file obj>")
TMP_DIR, MISSING, PLAIN = Token("<tmp dir>"), Token("<missing path>"), Token("<plain file>")

# Every bad value the suite knows, per field. Each is tried once on its own (on an otherwise
# valid spec, for every API: the edge sweep), and hypothesis mixes them with generated ones.
_STDIO_EDGES = [subprocess.PIPE, subprocess.STDOUT, CLOSED_FD, -1, -5, 1.5, True, 2**31, 2**40,
                "x", b"1"]
EDGES: dict[str, list[Any]] = {
    "argv": [[], (), "true", b"true", 42, None, {"true": 1}, ["tr\0ue"], ["true", "a\0b"],
             ["true", b"\0"], ["true", 3], ["true", None], ["true", ["nested"]], [""], ["/"],
             [TMP_DIR], [PLAIN], [MISSING], ["no-such-program-tether"], ["\ud800"], [42],
             [None], [1.5], ["true", "\ud800"], ["true", "\udcff"], ("true",)],
    "env": ["A=B", [("A", "B")], 3, {"A=B": "c"}, {"": "c"}, {"A\0": "c"}, {"A": "c\0d"},
            {3: "c"}, {"A": 3}, {"A": None}, {None: "x"}, {"\ud800": "x"}, {"A": "\ud800"},
            {"=x": "y"}, {b"": b"x"}, {"PATH": "/nonexistent"}, {"PATH": ""}],
    "cwd": [MISSING, PLAIN, "a\0b", 42, "", "\ud800", b"/nonexistent", 1.5],
    "stdin": _STDIO_EDGES,
    "stdout": _STDIO_EDGES,
    "stderr": _STDIO_EDGES,
    "pass_fds": [[CLOSED_FD], [-1], [True], [2**31], [2**63], ["3"], [1.5], [None], "3", b"\3",
                 3, None, {OPEN_FD}, (OPEN_FD, OPEN_FD), [0, 1, 2, OPEN_FD]],
    "contain": ["bogus", 3, "GROUP", b"group", ""],
    "timeout": [0, 0.0, -1, -0.0, math.nan, math.inf, -math.inf, "x", 10**300, 1e300, True,
                1e-9, [], 2**64],
}
DEFAULTS: dict[str, Any] = {
    "argv": ["true"], "env": None, "cwd": None, "stdin": None, "stdout": None, "stderr": None,
    "pass_fds": [], "contain": "group", "timeout": 5,
}

TEXT = st.text(max_size=6)
ODD = st.sampled_from(["a\0b", "", "\udcff", "\ud800", " ", "-", "=", "\n"])
PROGRAMS = st.sampled_from([
    "true", "/bin/true", "false", b"true", Path("/bin/true"), "no-such-program-tether", "",
    "/", "tr\0ue", "\ud800", 42, None, 1.5, TMP_DIR, PLAIN, MISSING,
])
ARGS = st.one_of(TEXT, st.binary(max_size=6), ODD,
                 st.sampled_from([b"\0", 3, None, 1.5, Path("x"), ["nested"]]))
ARGV = st.one_of(
    st.builds(lambda p, rest: [p, *rest], PROGRAMS, st.lists(ARGS, max_size=3)),
    st.builds(lambda p, rest: (p, *rest), PROGRAMS, st.lists(ARGS, max_size=2)),
    st.sampled_from(EDGES["argv"]),
    st.builds(lambda: iter(["true"])),
)
ENV_KEYS = st.one_of(TEXT, st.sampled_from(["A=B", "", "A\0", "PATH", b"K", b"", 3, None,
                                            "\ud800", "=x"]))
ENV_VALUES = st.one_of(TEXT, st.sampled_from(["x\0y", b"v", b"\0", 3, None, "", "\ud800"]))
ENV = st.one_of(
    st.none(),
    st.dictionaries(ENV_KEYS, ENV_VALUES, max_size=3),
    st.sampled_from(EDGES["env"]),
)
CWD = st.sampled_from([None, TMP_DIR, "/", b"/", Path("/"), *EDGES["cwd"]])
FD = st.sampled_from([OPEN_FD, CLOSED_FD, -1, 0, 1, 2, True, 2**31, 2**63, "3", 1.5, None])
PASS_FDS = st.one_of(st.lists(FD, max_size=3), st.sampled_from(EDGES["pass_fds"]))
STDIO = st.sampled_from([None, subprocess.DEVNULL, OPEN_FD, FILE_OBJ, *_STDIO_EDGES])
CONTAIN = st.sampled_from(["group", "cgroup", "pidns", "auto", None, *EDGES["contain"]])
TIMEOUT = st.sampled_from([None, 5, 5.0, *EDGES["timeout"]])


@dataclass
class Spec:
    api: str
    argv: Any
    env: Any
    cwd: Any
    stdin: Any
    stdout: Any
    stderr: Any
    pass_fds: Any
    contain: Any
    timeout: Any


FIELDS = ("argv", "env", "cwd", "stdin", "stdout", "stderr", "pass_fds", "contain", "timeout")
SAFE_TEXT = st.text(st.characters(exclude_characters="\0=", exclude_categories=["Cs"]),
                    min_size=1, max_size=6)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "argv": st.builds(lambda p, rest: [p, *rest],
                      st.sampled_from(["true", "/bin/true", "false", b"true", Path("/bin/true")]),
                      st.lists(st.one_of(SAFE_TEXT, st.binary(max_size=4).filter(
                          lambda b: b"\0" not in b)), max_size=3)),
    "env": st.one_of(st.none(), st.dictionaries(SAFE_TEXT, SAFE_TEXT, max_size=3)),
    "cwd": st.sampled_from([None, TMP_DIR, "/", Path("/")]),
    "stdin": st.sampled_from([None, subprocess.DEVNULL, OPEN_FD, FILE_OBJ]),
    "stdout": st.sampled_from([None, subprocess.DEVNULL, OPEN_FD, FILE_OBJ]),
    "stderr": st.sampled_from([None, subprocess.DEVNULL, OPEN_FD, FILE_OBJ]),
    "pass_fds": st.sampled_from([[], [OPEN_FD], (OPEN_FD,), [0, 1, 2]]),
    "contain": st.sampled_from(["group", "cgroup", "pidns", "auto", None]),
    "timeout": st.sampled_from([None, 5, 5.0, 30]),
}
ANY: dict[str, st.SearchStrategy[Any]] = {
    "argv": ARGV, "env": ENV, "cwd": CWD, "stdin": STDIO, "stdout": STDIO, "stderr": STDIO,
    "pass_fds": PASS_FDS, "contain": CONTAIN, "timeout": TIMEOUT,
}


def specs(apis: tuple[str, ...]) -> st.SearchStrategy[Spec]:
    """A valid spec with up to three of its fields drawn from anything, valid or not."""

    @st.composite
    def build(draw: st.DrawFn) -> Spec:
        bad = draw(st.permutations(FIELDS))[: draw(st.sampled_from([0, 1, 1, 2, 3]))]
        values = {f: draw(ANY[f] if f in bad else VALID[f]) for f in FIELDS}
        return Spec(api=draw(st.sampled_from(apis)), **values)

    return build()


TYPED = (TypeError, ValueError, OSError, subprocess.TimeoutExpired)


@dataclass
class Violation:
    what: str
    example: str


@dataclass
class FuzzReport:
    examples: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def distinct(self) -> dict[str, str]:
        """Each kind of violation with its shortest example."""
        out: dict[str, str] = {}
        for v in self.violations:
            if v.what not in out or len(v.example) < len(out[v.what]):
                out[v.what] = v.example
        return out


class Resources:
    """The per-example fds and paths a spec's tokens stand for; all closed afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stack = contextlib.ExitStack()
        self._pipe: tuple[int, int] | None = None

    def pipe(self) -> tuple[int, int]:
        if self._pipe is None:
            r, w = os.pipe2(os.O_CLOEXEC)
            self.stack.callback(os.close, r)
            self.stack.callback(os.close, w)
            self._pipe = (r, w)
        return self._pipe

    def resolve(self, value: Any, reading: bool = False) -> Any:
        if isinstance(value, Token):
            if value == OPEN_FD:
                r, w = self.pipe()
                return r if reading else w
            if value == CLOSED_FD:
                fd = 1000
                while _is_open(fd):
                    fd += 1
                return fd
            if value == FILE_OBJ:
                return self.stack.enter_context(open(os.devnull, "rb" if reading else "wb"))
            if value == TMP_DIR:
                return str(self.tmp)
            if value == MISSING:
                return str(self.tmp / "missing")
            if value == PLAIN:
                return str(self.tmp / "plain.txt")
        if isinstance(value, list):
            return [self.resolve(v, reading) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v, reading) for v in value)
        if isinstance(value, set):
            return {self.resolve(v, reading) for v in value}
        return value


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def expected_code(argv: Any) -> int | None:
    """What a correctly run spec must exit with (None: not a program we know)."""
    try:
        prog = os.fsdecode(os.fspath(argv[0]))
    except Exception:
        return None
    return {"true": 0, "/bin/true": 0, "false": 1}.get(prog)


class Spawners:
    """The three entry points under test; a broken variant overrides them."""

    def __init__(self, pen: Pen) -> None:
        self.pen = pen

    def spawn_lifelined(self, s: Spec, r: Resources) -> tuple[str, int | None]:
        spawned = tether.spawn_lifelined(
            r.resolve(s.argv), env=r.resolve(s.env), cwd=r.resolve(s.cwd),
            stdin=r.resolve(s.stdin, True), stdout=r.resolve(s.stdout),
            stderr=r.resolve(s.stderr), pass_fds=r.resolve(s.pass_fds, True),
        )
        try:
            try:
                return "ran", spawned.pidfd.wait(s.timeout).returncode
            except subprocess.TimeoutExpired:
                return "timeout", None
            finally:
                if spawned.pidfd.poll() is None:
                    spawned.pidfd.send_signal(9)
                    spawned.pidfd.wait()
        finally:
            spawned.lifeline.close()
            spawned.pidfd.close()

    def spawn(self, s: Spec, r: Resources) -> tuple[str, int | None]:
        child = tether.spawn(
            r.resolve(s.argv), contain=s.contain, env=r.resolve(s.env), cwd=r.resolve(s.cwd),
            stdin=r.resolve(s.stdin, True), stdout=r.resolve(s.stdout),
            stderr=r.resolve(s.stderr), pass_fds=r.resolve(s.pass_fds, True),
            cgroup_root=self.pen.path,
        )
        with child:
            try:
                return "ran", child.wait(s.timeout)
            except subprocess.TimeoutExpired:
                return "timeout", None

    def run(self, s: Spec, r: Resources) -> tuple[str, int | None]:
        try:
            done = tether.run(
                r.resolve(s.argv), timeout=s.timeout, contain=s.contain, env=r.resolve(s.env),
                cwd=r.resolve(s.cwd), stdin=r.resolve(s.stdin, True),
                stdout=r.resolve(s.stdout), stderr=r.resolve(s.stderr),
                pass_fds=r.resolve(s.pass_fds, True), cgroup_root=self.pen.path,
            )
        except subprocess.TimeoutExpired:
            return "timeout", None
        return "ran", done.returncode


class BrokenSpawners(Spawners):
    """Broken on purpose: opens a helper fd before validating and leaks it when the spec is
    refused, and looks PATH up in a given env without checking it is there (KeyError)."""

    def spawn_lifelined(self, s: Spec, r: Resources) -> tuple[str, int | None]:
        helper = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        env = r.resolve(s.env)
        if isinstance(env, dict) and not os.fsdecode(r.resolve(s.argv)[0]).startswith("/"):
            _ = env["PATH"]
        result = super().spawn_lifelined(s, r)
        os.close(helper)
        return result


def judge(spawners: Spawners, s: Spec, tmp: Path, report: FuzzReport) -> None:
    """Run one spec; record any violation of the bad-input guarantee."""
    report.examples += 1
    fds_before = open_fds()
    dirs_before = spawners.pen.tree_dirs()
    example = repr(s)
    outcome = "?"
    res = Resources(tmp)
    try:
        with res.stack:
            try:
                outcome, code = getattr(spawners, s.api)(s, res)
            except TYPED as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                outcome = type(exc).__name__
                report.violations.append(Violation(
                    f"{s.api}: untyped {type(exc).__name__}: {exc}"[:160], example))
            else:
                want = expected_code(s.argv)
                if outcome == "ran" and want is not None and code != want:
                    report.violations.append(Violation(
                        f"{s.api}: ran but returned {code}, expected {want}", example))
    finally:
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
    seen = reap_until(2.0)
    if not seen.empty:
        report.violations.append(Violation(f"{s.api}: a process was left behind", example))
        spawners.pen.clean()
    # A cgroup-mode start that ran makes the next tree's directory ahead: process-wide, kept
    # until exit, not this example's.
    cgroup_ahead.drain()
    fds_after = open_fds()
    if fds_after != fds_before:
        report.violations.append(Violation(
            f"{s.api}: fds changed (+{sorted(fds_after - fds_before)} "
            f"-{sorted(fds_before - fds_after)})", example))
        for fd in fds_after - fds_before:  # keep the next examples' counts meaningful
            with contextlib.suppress(OSError):
                os.close(fd)
    if spawners.pen.tree_dirs() != dirs_before:
        report.violations.append(Violation(f"{s.api}: a cgroup directory was left", example))


@contextlib.contextmanager
def fuzz_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tether-fuzz-") as d:
        tmp = Path(d)
        (tmp / "plain.txt").write_text("not a program\n")
        yield tmp


def edge_specs(api: str) -> Iterator[Spec]:
    """Every known bad value, alone on an otherwise valid spec."""
    for name, values in EDGES.items():
        if name == "contain" and api == "spawn_lifelined":
            continue  # spawn_lifelined has no containment
        for value in values:
            yield Spec(api=api, **{**DEFAULTS, name: value})


def check_bad_input(
    spawners: Spawners, apis: tuple[str, ...], max_examples: int, *, edges: bool = True
) -> FuzzReport:
    """The edge sweep, then ``max_examples`` generated specs; every example judged,
    violations collected."""
    report = FuzzReport()
    with fuzz_tmp() as tmp:
        if edges:
            for api in apis:
                for spec in edge_specs(api):
                    judge(spawners, spec, tmp, report)

        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(spec=specs(apis))
        def prop(spec: Spec) -> None:
            judge(spawners, spec, tmp, report)

        prop()
    return report


def _warm_up(pen: Pen) -> None:
    # First uses open lazily cached fds (the pidns probe's /dev/null) and probe the kernel:
    # do them before any example counts fds.
    for mode in ("group", "cgroup", "pidns", "auto"):
        tether.run(["true"], contain=mode, cgroup_root=pen.path)
    tether.spawn_lifelined(["true"]).pidfd.wait()


@pytest.mark.parametrize("api", ["spawn_lifelined", "spawn", "run"])
def test_bad_input_is_refused_with_a_typed_error_and_leaks_nothing(api: str, pen: Pen) -> None:
    _warm_up(pen)
    report = check_bad_input(Spawners(pen), (api,), size(100, 1500))
    distinct = report.distinct()
    record(f"fuzz[{api}]",
           f"{report.examples} generated specs: {dict(sorted(report.outcomes.items()))}; "
           f"{len(report.violations)} violations ({len(distinct)} distinct)",
           examples=report.examples, outcomes=report.outcomes,
           violations=distinct)
    assert not distinct, "\n".join(f"{what}\n    e.g. {ex}" for what, ex in distinct.items())


def test_checker_catches_a_broken_spawner(pen: Pen) -> None:
    _warm_up(pen)
    report = check_bad_input(BrokenSpawners(pen), ("spawn_lifelined",), 100, edges=False)
    kinds = " ".join(report.distinct())
    assert "fds changed" in kinds, kinds
    assert "untyped" in kinds, kinds

