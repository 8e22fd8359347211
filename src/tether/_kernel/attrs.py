"""ProcessAttrs: subprocess's process attributes, as the clone child applies them.

The one rule this module owns: an attribute is applied by the clone child (``clone.c``: a
named step each), never by a guard for itself. The same values reach the child two ways: as
``core.spawn(attrs=...)`` for a program we clone, and as options on the guard's command line
(:meth:`ProcessAttrs.guard_options`) for a program the guard clones; the guard's own clone
gets :meth:`ProcessAttrs.for_guard` (only what must pass *through* the guard: inheritable fds
and ignored signals). Values are checked by :meth:`ProcessAttrs.build`, before any process
exists, with the errors subprocess gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from tether._kernel.record import frozen_record

__all__ = ["ProcessAttrs"]

_ID_MAX: Final = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel


def _check_id(value: object, what: str, too_large: type[Exception] = OverflowError) -> int:
    # (subprocess: OverflowError for a user or group, ValueError for an extra group)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} cannot be negative, got {value}")
    if value > _ID_MAX:
        raise too_large(f"{what} is too large: {value}")
    return value


@frozen_record
class ProcessAttrs:
    """What subprocess.Popen can ask of the child besides argv/env/cwd/fds.

    ``umask`` -1: unchanged; ``new_session``: setsid (the program still leads a group of
    its own number, so group containment is unchanged); ``inherit_fds``: close_fds=False;
    ``restore_signals`` False: SIGPIPE/SIGXFSZ keep the parent's disposition; ``uid``/``gid``
    -1: unchanged; ``groups`` None: unchanged. (``pipesize`` is the pipes' business: the
    stdlib's Popen sets it on the pipes it makes.)"""

    umask: int = -1
    new_session: bool = False
    inherit_fds: bool = False
    restore_signals: bool = True
    uid: int = -1
    gid: int = -1
    groups: tuple[int, ...] | None = None

    @classmethod
    def build(
        cls,
        *,
        umask: int = -1,
        new_session: bool = False,
        inherit_fds: bool = False,
        restore_signals: bool = True,
        uid: int | None = None,
        gid: int | None = None,
        groups: Iterable[int] | None = None,
    ) -> ProcessAttrs:
        """Check numeric attributes (names are resolved by the caller, as subprocess does)."""
        if isinstance(umask, bool) or not isinstance(umask, int):
            raise TypeError("umask must be an integer")
        if umask > 0o7777:
            raise ValueError(f"umask out of range: {umask:#o}")
        return cls(
            umask=max(umask, -1),
            new_session=bool(new_session),
            inherit_fds=bool(inherit_fds),
            restore_signals=bool(restore_signals),
            uid=-1 if uid is None else _check_id(uid, "User ID"),
            gid=-1 if gid is None else _check_id(gid, "Group ID"),
            groups=None if groups is None else tuple(
                _check_id(g, "Group ID", ValueError) for g in groups),
        )

    def core_tuple(self) -> tuple[int, bool, bool, bool, int, int, tuple[int, ...] | None]:
        """The ``attrs`` argument of ``core.spawn``."""
        return (self.umask, self.new_session, self.inherit_fds, not self.restore_signals,
                self.uid, self.gid, self.groups)

    def guard_options(self) -> list[bytes]:
        """The guard's options that make its clone of the program apply these attributes."""
        opts: list[bytes] = []
        if self.umask >= 0:
            opts += [b"--umask", str(self.umask).encode()]
        if self.new_session:
            opts += [b"--setsid", b"1"]
        if self.inherit_fds:
            opts += [b"--fds", b"inherit"]
        if not self.restore_signals:
            opts += [b"--signals", b"keep"]
        if self.uid >= 0:
            opts += [b"--uid", str(self.uid).encode()]
        if self.gid >= 0:
            opts += [b"--gid", str(self.gid).encode()]
        if self.groups is not None:
            if len(self.groups) > 64:
                raise ValueError("extra_groups: a guarded tree takes at most 64 groups")
            opts += [b"--groups", ",".join(map(str, self.groups)).encode() or b"-"]
        return opts

    def for_guard(self) -> ProcessAttrs | None:
        """What the guard's own clone needs so that these attributes can reach the program:
        inherited fds and ignored signals must pass *through* the guard; the rest (ids,
        umask, session) are the program's alone."""
        if not self.inherit_fds and self.restore_signals:
            return None
        return ProcessAttrs(inherit_fds=self.inherit_fds, restore_signals=self.restore_signals)
