"""Packaging: the license is declared the way tools read it, the wheel carries no C sources,
and a failed build says why."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_setup_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tether_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds nothing: setup() runs only as __main__
    return module


def test_no_compiler_is_named_as_such(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Behind a build/ directory left from an earlier install the extension step passes
    without a compiler; the guard's step must then say that no compiler was found."""
    setup_py = load_setup_py()
    monkeypatch.setenv("TETHER_GUARD_CC", "/nonexistent/cc")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(RuntimeError, match="no C compiler found"):
        setup_py._compile_guard(str(tmp_path / "_guard"))
    assert not os.path.exists(tmp_path / "_guard")


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_wheel_package_data_leaves_the_c_sources_out() -> None:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = setuptools_cfg["package-data"]["tether"]
    assert not [p for p in shipped if p.endswith((".c", ".h"))]
    assert setuptools_cfg["exclude-package-data"]["tether._kernel"] == ["*.c", "*.h"]


def test_libc_override_builds_a_working_libc_guard(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TETHER_GUARD_BUILD=libc (the fallback for architectures without nolibc/) builds a
    guard linked against a libc, and tether runs a tree under it."""
    import tether
    from tether._kernel.guard_build import guard_build
    from tether._tree import modes

    setup_py = load_setup_py()
    monkeypatch.setenv("TETHER_GUARD_BUILD", "libc")
    guard = str(tmp_path / "_guard")
    kind = setup_py._compile_guard(guard)
    assert kind.startswith(("static libc", "dynamic libc"))
    assert not guard_build(guard).startswith("libc-free")
    monkeypatch.setattr(modes, "GUARD_PATH", guard)
    assert tether.run(["sh", "-c", "exit 3"]).returncode == 3


def test_unknown_guard_build_override_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    setup_py = load_setup_py()
    monkeypatch.setenv("TETHER_GUARD_BUILD", "uclibc")
    with pytest.raises(RuntimeError, match="TETHER_GUARD_BUILD='uclibc'"):
        setup_py._compile_guard(str(tmp_path / "_guard"))
    assert not os.path.exists(tmp_path / "_guard")
