"""Linting paths as a project: find the Python files, apply each one's config, collect results.

A file that cannot be read or parsed is an error of its own, reported beside the findings of
every other file: one broken file never hides the findings elsewhere.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.util import decode_source
from pathlib import Path
from typing import Final

from tether.lint._config import Config, ConfigFinder
from tether.lint._findings import Finding, findings_for_tree

#: Directory names never walked into: VCS data, caches, build output, installed packages.
_SKIPPED_DIRECTORIES: Final = frozenset(
    {"__pycache__", "build", "dist", "node_modules", "site-packages", "venv", "env"}
)


@dataclass(frozen=True, slots=True, order=True)
class FileError:
    """A path that could not be linted (unreadable, not Python, a syntax error)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: error: {self.message}"


@dataclass
class LintReport:
    """The outcome of `check_paths`: findings and per-file errors, each sorted."""

    findings: list[Finding] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files_checked: int = 0
    lines_checked: int = 0


def _skip_directory(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name in _SKIPPED_DIRECTORIES or name.endswith(".egg-info"):
        return True
    # A virtualenv under any name announces itself with pyvenv.cfg.
    return os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))


def _walk(directory: str, config: Config, report: LintReport) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        report.errors.append(FileError(directory, f"cannot read: {error.strerror or error}"))
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if not _skip_directory(entry) and not config.is_excluded(Path(entry.path)):
                yield from _walk(entry.path, config, report)
        elif (
            entry.name.endswith(".py")
            and entry.is_file()
            and not config.is_excluded(Path(entry.path))
        ):
            yield entry.path


def _lint_file(path: str, codes: frozenset[str], report: LintReport) -> None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        report.errors.append(FileError(path, f"cannot read: {error.strerror or error}"))
        return
    try:
        # ast.parse honours a PEP 263 coding cookie when given bytes.
        tree = ast.parse(data, filename=path)
    except SyntaxError as error:
        where = f"line {error.lineno}, column {error.offset}: " if error.lineno else ""
        report.errors.append(FileError(path, f"syntax error: {where}{error.msg}"))
        return
    except (ValueError, RecursionError, MemoryError) as error:
        # ValueError: NUL bytes in the source; RecursionError: absurdly nested expressions.
        report.errors.append(FileError(path, f"cannot parse: {error}"))
        return
    report.files_checked += 1
    report.lines_checked += data.count(b"\n")
    try:
        source = decode_source(data)
        report.findings.extend(findings_for_tree(tree, source, path, codes))
    except RecursionError:
        report.errors.append(FileError(path, "cannot check: expressions nested too deeply"))


def check_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> LintReport:
    """Lint files and directories (walked for ``*.py``) and return findings and file errors.

    Each path is governed by the nearest ``pyproject.toml`` with a ``[tool.tether.lint]`` table
    above it (else the one above the cwd); `select` replaces its ``select`` and `ignore` adds
    to its ``ignore``.  Files are parsed, never imported.  Raises `ConfigError` (a
    `ValueError`) for an invalid config or unknown rule code.
    """
    select = None if select is None else list(select)
    ignore = None if ignore is None else list(ignore)
    finder = ConfigFinder()
    report = LintReport()
    seen: set[str] = set()
    for raw_path in paths:
        path = os.fspath(raw_path)
        config = finder.for_path(Path(path)).with_overrides(select, ignore)
        if os.path.isdir(path):
            files: Iterable[str] = _walk(path, config, report)
        elif config.is_excluded(Path(path)):
            # Explicit files are excluded too: pre-commit passes every changed file by name.
            continue
        else:
            files = (path,)
        for file_path in files:
            if file_path not in seen:
                seen.add(file_path)
                _lint_file(file_path, config.codes_for(Path(file_path)), report)
    report.findings.sort()
    report.errors.sort()
    return report
