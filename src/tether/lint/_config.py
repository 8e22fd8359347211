"""``[tool.tether.lint]`` in ``pyproject.toml``: which rules run on which files.

Every key is validated when the file is read: an unknown key or rule code is an error, never a
silently ignored setting, because a typo in an allowance list would quietly switch a rule off.

```toml
[tool.tether.lint]
select = ["TET"]                       # codes or prefixes; default: every rule
ignore = ["TET203"]
exclude = ["tests/fixtures/*"]         # globs, relative to this file's directory
per-file-ignores = { "tests/*" = ["TET201", "TET601"] }
```
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tether.lint._rules import ALL_CODES, expand_codes

_TABLE: Final = "[tool.tether.lint]"
_KEYS: Final = frozenset({"select", "ignore", "exclude", "per-file-ignores"})


class ConfigError(ValueError):
    """A ``[tool.tether.lint]`` table (or command-line selection) that cannot be used."""


@dataclass(frozen=True)
class Config:
    """The lint settings for the files under one project root."""

    #: Directory of the pyproject.toml the settings came from (``None``: built-in defaults).
    root: Path | None = None
    enabled: frozenset[str] = ALL_CODES
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, frozenset[str]], ...] = field(default=())

    def _relative(self, path: Path) -> str:
        if self.root is None:
            return path.as_posix()
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def is_excluded(self, path: Path) -> bool:
        """Whether `path` (a file or directory) or a directory it lies in matches an
        ``exclude`` glob: ``vendor`` excludes ``vendor/v.py`` also when that file is named on
        the command line (pre-commit passes every changed file by name)."""
        if not self.exclude:
            return False
        try:
            parts = path.resolve().relative_to(self.root).parts if self.root else None
        except ValueError:
            parts = None
        if not parts:
            # Outside this config's root: only the path itself can match, never the
            # directories it happens to lie in (/tmp for an exclude of "tmp").
            return _matches(path.as_posix(), path.name, self.exclude)
        return any(
            _matches("/".join(parts[:depth]), parts[depth - 1], self.exclude)
            for depth in range(1, len(parts) + 1)
        )

    def codes_for(self, path: Path) -> frozenset[str]:
        """The rule codes that apply to the file at `path`, after ``per-file-ignores``."""
        if not self.per_file_ignores:
            return self.enabled
        relative = self._relative(path)
        codes = self.enabled
        for pattern, ignored in self.per_file_ignores:
            if _matches(relative, path.name, (pattern,)):
                codes -= ignored
        return codes

    def with_overrides(
        self, select: Iterable[str] | None, ignore: Iterable[str] | None
    ) -> Config:
        """This config with command-line ``--select`` (replaces) and ``--ignore`` (adds)."""
        enabled = self.enabled
        if select is not None:
            enabled = expand_codes(select, source="--select")
        if ignore is not None:
            enabled -= expand_codes(ignore, source="--ignore")
        return Config(self.root, enabled, self.exclude, self.per_file_ignores)


def _matches(relative: str, name: str, patterns: Iterable[str]) -> bool:
    # A pattern without a slash also matches the bare name at any depth ("build", "*_pb2.py").
    return any(
        fnmatch.fnmatchcase(relative, pattern)
        or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern))
        for pattern in patterns
    )


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return value


def parse_table(table: Mapping[str, object], root: Path | None, where: str) -> Config:
    """Validate a ``[tool.tether.lint]`` table; errors read ``<where>: error: <key>: ...``."""
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: error: {_TABLE}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_KEYS))})"
        )
    try:
        select = table.get("select")
        ignore = table.get("ignore")
        enabled = ALL_CODES
        if select is not None:
            enabled = expand_codes(_string_list(select, "select"), source="select")
        if ignore is not None:
            enabled -= expand_codes(_string_list(ignore, "ignore"), source="ignore")
        exclude = tuple(_string_list(table.get("exclude", []), "exclude"))
        per_file = table.get("per-file-ignores", {})
        if not isinstance(per_file, dict):
            raise ConfigError(f"per-file-ignores: expected a table, got {per_file!r}")
        per_file_ignores: list[tuple[str, frozenset[str]]] = []
        for pattern, codes in per_file.items():
            key = f"per-file-ignores.{pattern!r}"
            per_file_ignores.append((pattern, expand_codes(_string_list(codes, key), source=key)))
    except ValueError as error:  # ConfigError and UnknownRuleError
        raise ConfigError(f"{where}: error: {_TABLE} {error}") from None
    return Config(root, enabled, exclude, tuple(per_file_ignores))


def load(pyproject: Path) -> Config | None:
    """The config in `pyproject`, or ``None`` if it has no ``[tool.tether.lint]`` table."""
    try:
        with pyproject.open("rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{pyproject}: error: cannot read: {error}") from None
    table = document.get("tool", {}).get("tether", {}).get("lint")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: error: {_TABLE} must be a table")
    return parse_table(table, pyproject.parent.resolve(), str(pyproject))


class ConfigFinder:
    """Finds and caches the config that governs a path, like ruff: the nearest ancestor
    ``pyproject.toml`` that has a ``[tool.tether.lint]`` table, else the built-in defaults."""

    def __init__(self) -> None:
        self._by_directory: dict[Path, Config | None] = {}

    def for_path(self, path: Path) -> Config:
        """The config for `path`: searched from its directory up, then from the cwd up."""
        found = self._search(path if path.is_dir() else path.parent)
        if found is None:
            found = self._search(Path.cwd())
        return found if found is not None else Config()

    def _search(self, start: Path) -> Config | None:
        start = start.resolve()
        visited: list[Path] = []
        found: Config | None = None
        for directory in (start, *start.parents):
            if directory in self._by_directory:
                found = self._by_directory[directory]
                break
            visited.append(directory)
            candidate = directory / "pyproject.toml"
            if os.path.isfile(candidate):
                found = load(candidate)
                if found is not None:
                    break
        for directory in visited:
            self._by_directory[directory] = found
        return found
