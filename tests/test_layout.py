"""The layout rules that keep the code readable, checked on tether's own source.

Each test names one rule of ARCHITECTURE.md and fails with the places that break it. (The
layer contract itself is `lint-imports`, run by .ci/run; these are the rules it cannot see.)
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
import tether._kernel.core

# The source tree of this checkout (the installed package ships no C sources); the installed
# package's own directory where the tests run beside an installed copy only.
_CHECKOUT = Path(__file__).resolve().parent.parent / "src" / "tether"
SRC = _CHECKOUT if _CHECKOUT.is_dir() else Path(tether.__file__).resolve().parent
MAX_MODULE_LINES = 500
MAX_C_FUNCTION_LINES = 100
MAX_CLONE_CHILD_LINES = 70


def _python_modules() -> Iterator[Path]:
    yield from sorted(SRC.rglob("*.py"))


def _c_sources() -> Iterator[Path]:
    found = [p for pattern in ("*.c", "*.h") for p in sorted(SRC.rglob(pattern))]
    if not found:
        pytest.skip(f"no C sources under {SRC} (an installed copy, not a checkout)")
    yield from found


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of tether (not an attribute)."""
    rel = Path(*dotted.split(".")[1:])
    base = SRC / rel
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists() or any(
        SRC.glob(f"{rel}.*.so")) or any(SRC.glob(f"{rel}.pyi"))


def test_no_module_imports_a_private_name_from_another_module() -> None:
    # `from tether.x import _y` reaches into x's private parts: a shared helper gets a
    # public name in the module that owns it. (Private *modules* are fine: the underscore
    # packages are tether's own inside.)
    offences = []
    for path in _python_modules():
        tree = ast.parse(path.read_text(), str(path))
        here = _module_name(path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.level:
                offences.append(f"{path.name}:{node.lineno}: relative import")
                continue
            if not node.module.startswith("tether") or node.module == here:
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and not _is_module(
                        f"{node.module}.{name}"):
                    offences.append(f"{path.relative_to(SRC)}:{node.lineno}: "
                                    f"from {node.module} import {name}")
    assert offences == []


def test_every_python_module_fits_one_sitting() -> None:
    too_long = {str(p.relative_to(SRC)): n for p in _python_modules()
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}


def test_every_c_source_fits_one_sitting() -> None:
    too_long = {str(p.relative_to(SRC)): n for p in _c_sources()
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}


_C_FUNCTION = re.compile(r"^[A-Za-z_][\w \*]*\b(\w+)\([^;]*\)\s*\{?\s*$")


def _c_functions(text: str) -> Iterator[tuple[str, int]]:
    """(name, line count) of every top-level function definition: a line at column 0 that
    looks like a signature, up to its closing brace at column 0."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _C_FUNCTION.match(lines[i])
        if match and not lines[i].startswith(("typedef", "struct ", "#", "static const")):
            start = i
            while i < len(lines) and not lines[i].startswith("{") and not lines[i].rstrip(
                    ).endswith("{"):
                i += 1
            while i < len(lines) and lines[i] != "}":
                i += 1
            yield match.group(1), i - start + 1
        i += 1


def test_every_c_function_fits_a_screen() -> None:
    too_long = {}
    for path in _c_sources():
        for name, count in _c_functions(path.read_text()):
            if count > MAX_C_FUNCTION_LINES:
                too_long[f"{path.name}:{name}"] = count
    assert too_long == {}


def test_the_clone_child_is_a_short_list_of_steps() -> None:
    # The code between clone and exec is async-signal-safe only; it stays short enough to
    # audit at a glance (CPython's child_exec, musl's posix_spawn child).
    sources = {p.name: p.read_text() for p in _c_sources()}
    clone = sources.get("clone.c")
    if clone is None:
        pytest.fail("src/tether/_kernel/clone.c holds the clone child")
    lengths = dict(_c_functions(clone))
    child = [name for name in lengths if name.endswith("child_exec") or name == "child_main"]
    assert child, f"no child function found in clone.c (functions: {sorted(lengths)})"
    assert {name: lengths[name] for name in child if lengths[name] > MAX_CLONE_CHILD_LINES} == {}


def test_the_layers_are_folders() -> None:
    # L0 in tether/_kernel, L1 in tether/_tree, enforcement in lint/ and pytest_plugin/;
    # the import-linter contract in pyproject.toml names the same packages.
    for package in ("_kernel", "_tree", "lint", "pytest_plugin"):
        assert (SRC / package / "__init__.py").exists(), package
    pyproject = (SRC.parent.parent / "pyproject.toml")
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    text = pyproject.read_text()
    for layer in ("tether._kernel", "tether._tree", "tether.aio", "tether.lint"):
        assert f'"{layer}' in text or f"| {layer}" in text, layer


def test_the_c_extension_is_l0() -> None:
    assert tether._kernel.core.__name__ == "tether._kernel.core"
    assert os.path.basename(tether._kernel.core.__file__ or "").startswith("core.")
