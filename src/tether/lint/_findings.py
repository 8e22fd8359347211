"""From raw AST hits to `Finding`s: rule selection, ``# noqa`` and positions.

This module owns one rule: a hit the checker (`tether.lint._checker`) found is reported only
if its code is selected and no ``# noqa`` comment on the first or the last line of the flagged
node suppresses it, at a 1-based line and character column (ruff's convention).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from tether.lint._checker import PrimitiveChecker
from tether.lint._noqa import is_suppressed, suppressed_codes
from tether.lint._rules import RULES_BY_CODE, enabled_codes


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One use of a never-use primitive, at a 1-based line and column (ruff's convention)."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


_LINE_END: Final = re.compile(r"\r\n|\r|\n")


def _column(line_text: str, byte_offset: int) -> int:
    """1-based character column from the AST's UTF-8 byte offset."""
    if line_text.isascii():
        return byte_offset + 1
    return len(line_text.encode("utf-8")[:byte_offset].decode("utf-8", "replace")) + 1


def findings_for_tree(
    tree: ast.Module, source: str, path: str, enabled: frozenset[str]
) -> list[Finding]:
    """The findings in an already parsed module, after rule selection and ``# noqa``."""
    checker = PrimitiveChecker()
    checker.visit_module(tree)
    raw = checker.finish()
    if not raw:
        return []
    # Not str.splitlines(): it also splits on form feeds and other characters that are not
    # line ends to the parser, which would shift every later line number.
    lines = _LINE_END.split(source)
    findings: set[Finding] = set()
    for line, end_line, byte_col, code, primitive in raw:
        if code not in enabled:
            continue
        # The comment may sit on the first or the last line of a multi-line node.
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        if is_suppressed(code, suppressed_codes(text)):
            continue
        if (
            end_line != line
            and 0 < end_line <= len(lines)
            and is_suppressed(code, suppressed_codes(lines[end_line - 1]))
        ):
            continue
        findings.add(
            Finding(
                path, line, _column(text, byte_col), code, RULES_BY_CODE[code].message(primitive)
            )
        )
    return sorted(findings)


def check_source(
    source: str,
    path: str = "<string>",
    *,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> list[Finding]:
    """Lint Python `source` and return its findings, sorted by position.

    The source is parsed, never imported or executed, so checking untrusted code is safe.
    `select` and `ignore` take rule codes or prefixes (``"TET2"``); an unknown one raises
    `UnknownRuleError`.  A syntax error raises `SyntaxError`.
    """
    enabled = enabled_codes(select, ignore, source="check_source()")
    tree = ast.parse(source, filename=path)
    return findings_for_tree(tree, source, path, enabled)
