"""The libc-free guard's aarch64 layer (nolibc/arch_aarch64.h): cross-built with setup.py's
own command where an aarch64 cross compiler exists, and run under qemu-user where that
exists: its _start, argument parsing, writes, sendmsg and exit work, giving the native
guard's answers. (qemu-user 7.2 refuses PR_SET_CHILD_SUBREAPER, so a whole tree cannot run
there; the usage and setup-failure paths before it can.) Skipped, naming what is missing,
on machines without the tools: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
qemu-user-static."""

from __future__ import annotations

import errno
import importlib.util
import shutil
import socket
import struct
from pathlib import Path
from types import ModuleType

import pytest

import tether
from tether._kernel import core
from tether._kernel.guard_build import guard_build
from tether._tree.modes import guard_path

ROOT = Path(__file__).resolve().parent.parent
CROSS_CC = "aarch64-linux-gnu-gcc"
EM_AARCH64 = 183  # ELF e_machine


def _setup_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tether_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds nothing: setup() runs only as __main__
    return module


@pytest.fixture(scope="module")
def aarch64_guard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guard as setup.py would build it on an aarch64 machine."""
    cc = shutil.which(CROSS_CC)
    if cc is None:
        pytest.skip(f"no aarch64 cross compiler ({CROSS_CC}: gcc-aarch64-linux-gnu)")
    tmp = tmp_path_factory.mktemp("aarch64")
    probe = tmp / "probe.c"
    probe.write_text("#include <errno.h>\n#include <sys/types.h>\nint x = EINVAL;\n")
    headers = tether.run([cc, "-c", str(probe), "-o", str(tmp / "probe.o")],
                         capture_output=True)
    if headers.returncode != 0:
        pytest.skip("the aarch64 C library headers are missing (libc6-dev-arm64-cross): the "
                    "libc-free guard still takes its types and constants from them")
    out = tmp / "_guard"
    kind, cmd = _setup_py()._guard_attempts(cc, str(out), "aarch64")[0]
    assert kind == "libc-free (aarch64)"
    built = tether.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return out


def _qemu() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.skip("no qemu-user for aarch64 (qemu-user-static or qemu-user)")


def test_cross_built_guard_is_a_static_libc_free_aarch64_binary(aarch64_guard: Path) -> None:
    header = aarch64_guard.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", header, 18)[0] == EM_AARCH64
    assert guard_build(str(aarch64_guard)) == "libc-free (aarch64)"


@pytest.mark.parametrize("args", [[], ["--contain", "group", "--", "/bin/true", "true"],
                                  ["--control", "x"], ["--control", "1"]],
                         ids=["nothing", "no-control", "bad-control", "stdio-control"])
def test_usage_errors_are_the_native_guards(aarch64_guard: Path, args: list[str]) -> None:
    # _start, argc/argv/envp from the initial stack, write(2) and exit(2) on aarch64.
    native = tether.run([guard_path(), *args], capture_output=True)
    emulated = tether.run([_qemu(), str(aarch64_guard), *args], capture_output=True)
    assert native.returncode == 2
    assert (emulated.returncode, emulated.stderr) == (native.returncode, native.stderr)


def _failure_report(argv: list[str]) -> tuple[int, tuple[int, ...]]:
    """Run a guard with --control on a socketpair: its exit status and its one report."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with parent, child:
        fd = child.fileno()
        done = tether.run([*argv, "--control", str(fd), "--contain", "bogus", "--",
                           "/bin/true", "true"], pass_fds=(fd,), capture_output=True)
        child.close()
        return done.returncode, struct.unpack(core.GUARD_MSG_FORMAT,
                                              parent.recv(core.GUARD_MSG_SIZE))


def test_setup_failure_report_is_the_native_guards(aarch64_guard: Path) -> None:
    # The report travels as one struct tether_guard_msg over sendmsg; then exit 127.
    native = _failure_report([guard_path()])
    emulated = _failure_report([_qemu(), str(aarch64_guard)])
    setup_stage = next(n for n, what in core.STAGES.items() if what == "guard setup")
    fields = struct.calcsize(core.GUARD_MSG_FORMAT[1:]) // 4  # type + the int32 fields
    expected = (core.GUARD_MSG_FAILED, setup_stage, errno.EINVAL) + (0,) * (fields - 3)
    assert native == (127, expected)
    assert emulated == native
