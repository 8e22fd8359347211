"""Inline suppressions: ``# noqa`` (everything on the line) and ``# noqa: CODE[, CODE]  reason``.

The syntax is ruff's and flake8's, so one comment can carry allowances for every linter; text
after the codes is a free-form reason (tether's own L0 modules write why the primitive is
allowed there).
"""

from __future__ import annotations

import re
from typing import Final

# Codes are upper-case by convention; the `noqa` keyword itself is matched case-insensitively.
_NOQA: Final = re.compile(
    r"#\s*(?i:noqa)\b(?P<colon>:\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*)?)?"
)
_CODE_SPLIT: Final = re.compile(r"[\s,]+")

#: What a bare noqa comment (no codes) suppresses: every code.
ALL: Final = frozenset({"*"})


def suppressed_codes(line: str) -> frozenset[str]:
    """The codes a line's ``# noqa`` comment suppresses: `ALL`, some codes, or none.

    ``# noqa:`` followed by no recognisable code suppresses nothing, rather than everything:
    a typo in an allowance must not widen it.
    """
    if "noqa" not in line.lower():
        return frozenset()
    match = _NOQA.search(line)
    if match is None:
        return frozenset()
    if match.group("colon") is None:
        return ALL
    codes = match.group("codes")
    if codes is None:
        return frozenset()
    return frozenset(_CODE_SPLIT.split(codes))


def is_suppressed(code: str, suppressed: frozenset[str]) -> bool:
    """Whether `code` is covered by a line's `suppressed_codes`."""
    return suppressed is ALL or code in suppressed
