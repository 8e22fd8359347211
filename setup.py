"""Build tether's C parts: the extension module (tether._core) and the guard executable.

The guard is a plain C program (no Python) installed inside the package as ``tether/_kernel/_guard``
and found through the package, never through PATH. On x86_64 and aarch64 it links no libc at
all (``_kernel/nolibc/``: its own ``_start`` and raw syscalls), so every install gets the small
fast guard with nothing but a C compiler; elsewhere, or if that build fails, it is linked
statically against the toolchain's libc (musl first), else dynamically. The build log says
which, and so does the binary (``guard_build.c``, read by ``tether doctor``).
"""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: TET102  build-time only: runs the C compiler, never a tree of ours
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_SRC = os.path.join(HERE, "src", "tether")
KERNEL_SRC = os.path.join(PKG_SRC, "_kernel")
GUARD_SRC = os.path.join(KERNEL_SRC, "guard.c")
# The guard's other parts (guard.h says which does what), and the one clone site, which is
# compiled into both the guard and the extension.
CLONE_SOURCES = ["clone.c", "clone_parent.c", "clone_raw.c", "clone_early.c"]
GUARD_SOURCES = [GUARD_SRC] + [
    os.path.join(KERNEL_SRC, name)
    for name in ("guard_start.c", "guard_program.c", "guard_tree.c", "guard_cgroup.c",
                 "guard_usage.c", "guard_attrs.c",
                 *CLONE_SOURCES)
]
GUARD_NAME = "_guard"
GUARD_BUILD_SRC = os.path.join(KERNEL_SRC, "guard_build.c")
NOLIBC_SRC = os.path.join(KERNEL_SRC, "nolibc", "rt.c")
# The machines the freestanding runtime has a syscall layer for (nolibc/arch_*.h).
NOLIBC_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
# No libc code linked: no start files, no libc, no stack protector (it needs libc's canary),
# no builtins turned back into libc calls (nor loops into memset/memcpy inside rt.c itself),
# non-PIE (nothing in _start relocates the binary), no unwind tables (nothing unwinds).
# libgcc only for what the compiler itself may call; aarch64's outline atomics would need
# libc's getauxval, so they are inlined.
FREESTANDING_FLAGS = [
    "-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-tree-loop-distribute-patterns",
    "-fno-pie", "-no-pie", "-static", "-nostdlib", "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables", "-Wl,--build-id=none", "-DTETHER_GUARD_LIBC_FREE",
]


def _compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _guard_attempts(cc: str, out_path: str, machine: str) -> list[tuple[str, list[str]]]:
    """(kind, command) pairs to try in order for one compiler: libc-free where nolibc/ has the
    architecture, then static, then dynamic against the compiler's libc. TETHER_GUARD_BUILD
    narrows the choice: ``libc-free`` or ``libc`` (the fallback, e.g. to test it)."""
    wanted = os.environ.get("TETHER_GUARD_BUILD", "auto")
    if wanted not in ("auto", "libc-free", "libc"):
        raise RuntimeError(f"TETHER_GUARD_BUILD={wanted!r}: expected auto, libc-free or libc")
    base = [cc, *CFLAGS, "-Os", "-I", KERNEL_SRC, *GUARD_SOURCES, GUARD_BUILD_SRC, "-o", out_path]
    attempts = []
    arch = NOLIBC_ARCHES.get(machine)
    if wanted != "libc" and arch is not None:
        extra = ["-mno-outline-atomics"] if arch == "aarch64" else []
        attempts.append((f"libc-free ({arch})",
                         [*base, NOLIBC_SRC, *FREESTANDING_FLAGS, *extra, "-lgcc"]))
    if wanted != "libc-free":
        attempts.append(("static libc", [*base, "-static", '-DTETHER_GUARD_LINK="static"']))
        attempts.append(("dynamic libc", [*base, '-DTETHER_GUARD_LINK="dynamic"']))
    return attempts


def _compile_guard(out_path: str) -> str:
    """Compile the guard and return what kind of build it made (also written to the build
    log): libc-free on x86_64/aarch64 (about 25 KiB, no libc start-up), else musl static where
    musl-gcc exists, glibc static (about 700 KiB: glibc's own floor), or dynamic.
    TETHER_GUARD_CC picks a compiler explicitly; CC is left to the extension, which must
    match Python's libc. TETHER_GUARD_BUILD=libc skips the libc-free build.

    Raises RuntimeError naming the cause: no compiler at all (a `build/` directory left from
    an earlier install lets the extension step pass without one, so this may be the first
    step that needs it), or the compiler's own error output."""
    chosen = os.environ.get("TETHER_GUARD_CC")
    machine = os.uname().machine
    libc_compilers = [chosen] if chosen else [c for c in (shutil.which("musl-gcc"),) if c]
    libc_compilers.append(_compiler())
    # The libc-free build needs no libc, so it wants the plain compiler, not musl-gcc.
    attempts = [a for a in _guard_attempts(chosen or _compiler(), out_path, machine)
                if a[0].startswith("libc-free")]
    for cc in libc_compilers:
        attempts += [a for a in _guard_attempts(cc, out_path, machine)
                     if not a[0].startswith("libc-free")]
    last: subprocess.CalledProcessError | None = None
    for kind, cmd in attempts:
        try:
            subprocess.run(cmd, check=True, capture_output=True)  # noqa: TET102  build-time
        except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
            if isinstance(exc, subprocess.CalledProcessError):
                last = exc
                if kind.startswith("libc-free"):
                    # Not silent: the fallback is said here, and by `tether doctor`.
                    sys.stderr.write(exc.stderr.decode(errors="replace"))
                    sys.stderr.write(f"tether: the {kind} guard did not build (output above); "
                                     "falling back to a libc build\n")
            continue
        os.chmod(out_path, 0o755)
        built = f"{kind} ({os.path.basename(cmd[0])})"
        sys.stderr.write(f"tether: built the guard: {built}\n")
        return built
    if last is None:
        tried = ", ".join(dict.fromkeys(cmd[0] for _, cmd in attempts))
        raise RuntimeError(
            f"could not compile the tether guard ({GUARD_SRC}): no C compiler found (tried "
            f"{tried}); install gcc (or set CC / TETHER_GUARD_CC)")
    sys.stderr.write(last.stderr.decode(errors="replace"))
    raise RuntimeError(f"could not compile the tether guard ({GUARD_SRC}): "
                       f"{last.cmd[0]} failed (its output is above)")


class BuildWithGuard(build_ext):
    """build_ext that also compiles the guard executable next to the extension."""

    def run(self) -> None:
        super().run()
        if not os.path.exists(GUARD_SRC):
            return
        if self.inplace:
            target_dir = KERNEL_SRC
        else:
            target_dir = os.path.join(self.build_lib, "tether", "_kernel")
        os.makedirs(target_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            built = os.path.join(tmp, GUARD_NAME)
            _compile_guard(built)
            # Copy beside the target, then rename over it: writing into a guard that is
            # running (another test, another tree) fails with ETXTBSY; a rename does not.
            target = os.path.join(target_dir, GUARD_NAME)
            staging = f"{target}.{os.getpid()}.tmp"
            shutil.copy2(built, staging)
            os.replace(staging, target)


# setuptools runs this file as __main__ (also through build_meta); importing it (the tests
# do, for _compile_guard) builds nothing.
if __name__ == "__main__":
    setup(
        ext_modules=[
            Extension(
                "tether._kernel.core",
                sources=[f"src/tether/_kernel/{name}"
                         for name in ("core.c", "end.c", "exec_path.c", "launch.c",
                                      "launch_early.c",
                                      "start_report.c", "lifeline_registry.c", "fd_table.c",
                                      *CLONE_SOURCES)],
                depends=[f"src/tether/_kernel/{name}"
                         for name in ("clone.h", "core_convert.h", "guard_proto.h",
                                      "launch_early.h", "lifeline_registry.h", "fd_table.h")],
                extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter",
                                    "-Wno-missing-field-initializers", "-fno-strict-aliasing"],
            )
        ],
        cmdclass={"build_ext": BuildWithGuard},
    )
