"""The tether pytest plugin: every test runs contained, and a process it leaves running fails it.

The one rule this package owns: with ``--tether`` (or ``tether = true`` in the ini file), a
process that a test started -- through tether, ``subprocess``, ``os.fork``, or a daemon that
double-forked and called ``setsid`` -- and that is still alive when the test ends makes that
test fail with a teardown error naming the test and each leaked process (pid and command
line), and tether kills it. Without the option the plugin does nothing at all (it only offers
the ``tether_spawn`` fixture).

Containment, strongest first (the report header says which one a run uses):

* **cgroup v2** (a writable hierarchy, e.g. as root): pytest moves *itself* into a fresh
  cgroup ``<root>/tether/pytest-<random>/t-<n>`` for each test, so everything it forks lands
  there and stays there however it daemonizes. After the test pytest moves back to the cgroup
  it started in, and the test's cgroup is judged by its own files: ``cgroup.events``
  ``populated 0`` means nothing leaked; otherwise it is frozen (so the member list and each
  member's command line are exact: a frozen process cannot exit by itself, so its number
  cannot be recycled), listed from ``cgroup.procs``, killed with ``cgroup.kill``, awaited
  (``populated 0`` via POLLPRI) and removed. Fixtures of a wider scope than a test get a cgroup
  of their own while they set up, so a module-scoped server is not mistaken for a test's leak;
  it is judged when the fixture is finalized. ``TETHER_CGROUP_ROOT`` points into the active
  cgroup meanwhile, so ``tether.spawn(contain="cgroup")`` trees nest inside it.
* **child subreaper** (no writable cgroup, or ``--tether-containment=subreaper``): pytest
  becomes a child subreaper, so orphans (double-forked daemons) are re-parented to it. Linux
  has no call that lists a process's children (``/proc/PID/task/TID/children`` needs
  CONFIG_PROC_CHILDREN and is often missing), so the plugin probes the PID numbers allocated
  while the test ran -- the kernel's PID cursor, ``/proc/loadavg``, before and after -- and
  keeps only those that ``waitid(P_PIDFD, WNOHANG|WNOWAIT)`` proves are pytest's own unreaped
  children. A pidfd on an unreaped child pins its number, so naming and killing it is exact.
  Killing a leaked process orphans its own children to pytest, so the probe repeats until a
  round finds nothing alive. See :data:`SUBREAPER_BLIND_SPOTS` for what this cannot see.

Who owns a process (see ``_check``): the test, for what starts while it runs; a fixture wider
than a test, for what starts during its setup (or during the setup of a function-scoped fixture
that requests it and caches there); multiprocessing's forkserver and resource tracker are
process-lifetime helpers, never leaks. Before a scope is judged its processes get a grace
period (``--tether-grace``, ``tether_grace``) to exit by themselves. A test marked
``tether_allow_leak`` (or matched by the ``tether_allow_leak`` ini patterns) may leave
processes running; they are killed, unreported, at session end. The plugin never reaps a child
pytest created itself; with the subreaper, adopted orphans are reaped as they exit (``_forks``).

Where the plugin cannot work at all it says so in the header and checks nothing; it never
fails a run for that. ``--tether-enforce`` additionally runs :func:`tether.enforce` from the
first test on, so the never-use primitives raise in test code.

This module is the pytest11 entry point: the options, and the choice of containment at
configure time. The rest, one job per module: ``_check`` (the hooks around each test and
fixture, and the reports), ``_containment`` (the scope/leak interface the two mechanisms
implement), ``_cgroup_containment`` and ``_subreaper_containment`` (the mechanisms),
``_pidfds`` (pidfds on leaked processes, opened only on pinned numbers), ``_helpers``
(process-lifetime helpers), ``_forks`` (the proc connector: who forked whom), ``_fixture``
(``tether_spawn``), ``_patch_option`` (``--tether-patch``: the session under
:func:`tether.patch`). Every cgroup operation is ``tether._kernel.cgroup``'s; the subreaper flag
is ``tether._kernel.subreaper``'s.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

from tether._kernel.cgroup import cgroup_unavailable_reason
from tether._kernel.limits import Limits
from tether.pytest_plugin._cgroup_containment import CGROUP_BLIND_SPOTS, CgroupContainment
from tether.pytest_plugin._check import ALLOW_MARKER, LeakCheck
from tether.pytest_plugin._containment import DEFAULT_GRACE, Containment, Leak, NoContainment
from tether.pytest_plugin._fixture import tether_spawn
from tether.pytest_plugin._patch_option import add_patch_option, configure_patch
from tether.pytest_plugin._resources import (
    HeaviestReport,
    TestCgroups,
    add_resource_options,
    resource_options,
    unavailable,
)
from tether.pytest_plugin._subreaper_containment import (
    SUBREAPER_BLIND_SPOTS,
    SubreaperContainment,
)

__all__ = [
    "CGROUP_BLIND_SPOTS",
    "SUBREAPER_BLIND_SPOTS",
    "Leak",
    "pytest_addoption",
    "pytest_configure",
    "tether_spawn",
]

_PLUGIN_NAME: Final = "tether-leak-check"
_CONTAINMENTS: Final = ("auto", "cgroup", "subreaper")


# -- options -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tether", "tether: fail tests that leak processes")
    group.addoption(
        "--tether", action="store_true", default=None,
        help="run every test contained and fail it if it leaves a process running "
        "(ini: tether = true)",
    )
    group.addoption(
        "--tether-enforce", action="store_true", default=None,
        help="also run tether.enforce() for the session: os.fork, subprocess, os.kill, "
        "/proc/<pid> ... raise DoctrineViolation in test code (implies --tether; "
        "ini: tether_enforce = true)",
    )
    group.addoption(
        "--tether-containment", choices=_CONTAINMENTS, default=None,
        help="how tests are contained: auto (cgroup v2 where writable, else subreaper), "
        "cgroup (fail if unavailable), subreaper (force the fallback) (ini: tether_containment)",
    )
    parser.addini("tether", "fail tests that leak processes (like --tether)", type="bool",
                  default=False)
    parser.addini("tether_enforce", "run tether.enforce() for the session (implies tether)",
                  type="bool", default=False)
    group.addoption(
        "--tether-grace", type=float, default=None, metavar="SECONDS",
        help="how long a test's (or fixture's) processes may take to exit by themselves "
        f"before they count as leaked (default {DEFAULT_GRACE:g}; ini: tether_grace)",
    )
    parser.addini("tether_containment", "auto, cgroup or subreaper (see --tether-containment)",
                  default="auto")
    parser.addini("tether_grace", "seconds a scope may take to empty before it leaks "
                  "(see --tether-grace)", default=str(DEFAULT_GRACE))
    parser.addini("tether_allow_leak", "node-id patterns (fnmatch) of tests whose leftover "
                  f"processes are not leaks (like @pytest.mark.{ALLOW_MARKER})",
                  type="linelist", default=[])
    add_resource_options(parser)
    add_patch_option(parser)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ALLOW_MARKER}: with --tether, what this test leaves running is not a "
        "leak: it is kept, unreported, until the session ends")
    configure_patch(config)
    enforcing = bool(_option(config, "tether_enforce"))
    limits, heaviest = resource_options(config)
    measuring = limits is not None or heaviest is not None
    if not (enforcing or measuring or _option(config, "tether")):
        return  # inert: no hooks registered, nothing touched
    wanted = str(_option(config, "tether_containment"))
    if wanted not in _CONTAINMENTS:
        raise pytest.UsageError(
            f"tether_containment must be one of {', '.join(_CONTAINMENTS)}, not {wanted!r}")
    grace = _grace(config)
    containment = _choose_containment(wanted)
    containment.grace = grace
    check = LeakCheck(containment, enforcing, config.getini("tether_allow_leak"))
    # add_cleanup runs at unconfigure whatever happened (errors, KeyboardInterrupt).
    config.add_cleanup(check.shutdown)
    config.pluginmanager.register(check, _PLUGIN_NAME)
    if measuring:
        _measure(config, containment, limits, heaviest)


def _measure(config: pytest.Config, containment: Containment, limits: Limits | None,
             heaviest: int | None) -> None:
    """--tether-limits/--tether-heaviest: each test's cgroup gets the controllers' too."""
    if not isinstance(containment, CgroupContainment):
        raise unavailable(containment.header()[0].removeprefix("tether: "))
    try:
        containment.resources = TestCgroups(limits or Limits(), containment.session)
    except OSError as exc:  # Unsupported included: the controller it names is missing
        raise pytest.UsageError(f"tether_limits: {exc}") from None
    if heaviest is not None:
        config.pluginmanager.register(
            HeaviestReport(containment.resources, heaviest), _PLUGIN_NAME + "-heaviest")


def _grace(config: pytest.Config) -> float:
    value = _option(config, "tether_grace")
    try:
        grace = float(value)
    except ValueError:
        grace = -1.0
    if not grace >= 0.0 or grace == float("inf"):
        raise pytest.UsageError(
            f"tether_grace must be a number of seconds >= 0, not {value!r}")
    return grace


def _choose_containment(wanted: str) -> Containment:
    why: str | None = None
    if wanted in ("auto", "cgroup"):
        why = cgroup_unavailable_reason()
        if why is None:
            try:
                return CgroupContainment.start()
            except OSError as exc:
                why = f"cannot move pytest between cgroups: {exc}"
        if wanted == "cgroup":
            raise pytest.UsageError(f"--tether-containment=cgroup is unavailable: {why}")
        why = f"cgroup v2 unavailable: {why}"
    else:
        why = "forced by tether_containment=subreaper"
    try:
        return SubreaperContainment.start(why)
    except OSError as exc:
        return NoContainment(f"{why}; and no child subreaper either: {exc}")
