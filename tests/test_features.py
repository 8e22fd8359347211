"""tether._kernel.features: the clone-method probe (clone3, the legacy clone(CLONE_PIDFD)
fallback, or none), its cache, the force_clone_method test hook, and the rule that a
transient failure (EMFILE) is raised and never cached as "this kernel cannot"."""

from __future__ import annotations

import errno
import os
import resource
import sys
from collections.abc import Iterator

import pytest

import oracle
import tether
from tether._kernel import core as _core
from tether._kernel import features as _features

METHODS = (_core.CLONE_CLONE3, _core.CLONE_LEGACY, _core.CLONE_NONE)


@pytest.fixture
def reprobed() -> Iterator[int]:
    """A fresh probe's answer; the cache is forgotten again afterwards, whatever was forced."""
    _features.force_clone_method(None)
    try:
        yield _features.clone_method()
    finally:
        _features.force_clone_method(None)


def test_the_probe_answers_one_of_the_three_methods_and_keeps_it(reprobed: int) -> None:
    assert reprobed in METHODS
    assert _features.clone_method() == reprobed
    # One cache, the extension's: the spawn path reads the same answer.
    assert _core.clone_method()[0] == reprobed


def test_this_machine_has_a_pidfd_returning_clone(reprobed: int) -> None:
    # tether's guarantees rest on it; the suite cannot mean anything without one.
    assert reprobed != _core.CLONE_NONE, _features.clone_unsupported_reason()


def test_forcing_the_legacy_fallback_is_what_spawn_uses(reprobed: int) -> None:
    _features.force_clone_method(_core.CLONE_LEGACY)
    assert _features.clone_method() == _core.CLONE_LEGACY
    s = tether.spawn_lifelined(["sh", "-c", "exit 4"])
    assert s.pidfd.wait().code == 4
    s.lifeline.close()
    s.pidfd.close()
    # What only clone3 can do (CLONE_INTO_CGROUP) is refused under the fallback, up front.
    before = oracle.baseline_fds()
    with pytest.raises(tether.Unsupported, match="clone3"):
        tether.spawn(["true"], contain="cgroup")
    assert oracle.open_fds() == before


def test_forcing_none_makes_spawn_raise_unsupported_with_the_reason(reprobed: int) -> None:
    _features.force_clone_method(_core.CLONE_NONE)
    before = oracle.baseline_fds()
    with pytest.raises(tether.Unsupported, match="no pidfd-returning clone"):
        tether.spawn_lifelined(["true"])
    assert oracle.open_fds() == before
    assert oracle.no_descendants()


def test_forcing_none_back_reprobes_to_the_machines_answer(reprobed: int) -> None:
    _features.force_clone_method(_core.CLONE_LEGACY)
    _features.force_clone_method(None)
    assert _features.clone_method() == reprobed


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError):
        _features.force_clone_method(99)


def _probe_at_the_fd_limit(expected: int) -> None:
    """In a forked child (its own fd table and cache): probe with no fd free, then again."""
    _features.force_clone_method(None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    try:
        _features.clone_method()
    except OSError as exc:
        # The pidfd could not be allocated: a transient failure, raised as such.
        assert exc.errno == errno.EMFILE, exc
    else:
        raise AssertionError("the probe answered although no fd was free for its pidfd")
    for fd in fillers:
        os.close(fd)
    # Nothing was cached by the failure: with fds free the probe finds the real answer.
    assert _features.clone_method() == expected
    sys.exit(0)


def test_emfile_during_the_probe_is_raised_and_never_cached(reprobed: int) -> None:
    if reprobed == _core.CLONE_NONE:
        pytest.skip("no clone method here: the probe never gets as far as the pidfd")
    r, w = os.pipe2(os.O_CLOEXEC)

    def child() -> None:
        os.dup2(w, 2)  # its traceback, if an assertion fails, comes to us
        _probe_at_the_fd_limit(reprobed)

    try:
        s = tether.run_in_fork(child)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    assert s.pidfd.wait().code == 0, err
    s.lifeline.close()
    s.pidfd.close()
