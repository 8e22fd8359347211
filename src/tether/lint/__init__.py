"""``tether lint``: a static check for the process primitives tether's doctrine never uses.

The runtime counterpart is `tether.enforce()`; this side sees what no audit hook can (waitpid,
pidfd_open, signal handlers, /proc paths built for later) before the code ever runs.
"""

from tether.lint._cli import main
from tether.lint._config import ConfigError
from tether.lint._findings import Finding, check_source
from tether.lint._project import FileError, LintReport, check_paths
from tether.lint._rules import RULES, Rule, UnknownRuleError

__all__ = [
    "RULES",
    "ConfigError",
    "FileError",
    "Finding",
    "LintReport",
    "Rule",
    "UnknownRuleError",
    "check_paths",
    "check_source",
    "main",
]
