"""Build tether's C parts: the extension module (tether._core) and the guard executable.

The guard is a plain C program (no Python) installed inside the package as ``tether/_kernel/_guard``
and found through the package, never through PATH. It is linked statically where the
toolchain has a static libc, so it starts fast and keeps a small RSS; otherwise dynamically.
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
CLONE_SOURCES = ["clone.c", "clone_raw.c"]
GUARD_SOURCES = [GUARD_SRC] + [
    os.path.join(KERNEL_SRC, name)
    for name in ("guard_start.c", "guard_tree.c", "guard_cgroup.c", "guard_attrs.c",
                 *CLONE_SOURCES)
]
GUARD_NAME = "_guard"

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]


def _compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _compile_guard(out_path: str) -> None:
    """Compile the guard: musl static where musl-gcc exists (about 60 KiB resident), else
    glibc static (about 700 KiB: glibc's own floor), else dynamic. TETHER_GUARD_CC picks a
    compiler explicitly; CC is left to the extension, which must match Python's libc.

    Raises RuntimeError naming the cause: no compiler at all (a `build/` directory left from
    an earlier install lets the extension step pass without one, so this may be the first
    step that needs it), or the compiler's own error output."""
    chosen = os.environ.get("TETHER_GUARD_CC")
    compilers = [chosen] if chosen else [c for c in (shutil.which("musl-gcc"),) if c]
    compilers.append(_compiler())
    attempts = []
    for cc in compilers:
        base = [cc, *CFLAGS, "-Os", "-I", KERNEL_SRC, *GUARD_SOURCES, "-o", out_path]
        attempts += [[*base, "-static"], base]
    last: subprocess.CalledProcessError | None = None
    for cmd in attempts:
        try:
            subprocess.run(cmd, check=True, capture_output=True)  # noqa: TET102  build-time
        except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
            if isinstance(exc, subprocess.CalledProcessError):
                last = exc
            continue
        os.chmod(out_path, 0o755)
        return
    if last is None:
        tried = ", ".join(dict.fromkeys(cmd[0] for cmd in attempts))
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
                         for name in ("core.c", "lifeline_registry.c", *CLONE_SOURCES)],
                depends=[f"src/tether/_kernel/{name}"
                         for name in ("clone.h", "guard_proto.h", "lifeline_registry.h")],
                extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter",
                                    "-Wno-missing-field-initializers", "-fno-strict-aliasing"],
            )
        ],
        cmdclass={"build_ext": BuildWithGuard},
    )
