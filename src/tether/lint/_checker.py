"""The checks for never-use primitives: references, calls, signal handlers and /proc paths.

This module owns one rule: a primitive is flagged where the code uses it, as resolved through
the file's imports (`tether.lint._scope`): a reference to or call of a flagged name, a
``signal.signal`` handler that is neither ``SIG_DFL``/``SIG_IGN`` nor a handler saved earlier
in the module and now restored, a fork start method, ``os.waitid`` by PID or over all
children, and a ``/proc`` path built for another process's PID or a listing of ``/proc``.
Rule selection, ``# noqa`` and columns are applied afterwards, to the raw findings.
"""

from __future__ import annotations

import ast
import re
from typing import Final

from tether.lint._rules import REFERENCE_RULES
from tether.lint._scope import ScopeVisitor

#: A finding before noqa and column conversion: (line, end_line, byte_col, code, primitive).
RawFinding = tuple[int, int, int, str, str]

# A PID, or a glob over every PID ("/proc/*/stat", "/proc/[0-9]*").
_PROC_PID: Final = re.compile(r"/proc/(?:[0-9]+|\*|\[0-9\]\*?)(?:/|\Z)")
_PROC_PID_BYTES: Final = re.compile(rb"/proc/(?:[0-9]+|\*|\[0-9\]\*?)(?:/|\Z)")
_PROC_PRIMITIVE: Final = "/proc/<pid>"
_PROC_LISTING: Final = "listing /proc"
_LISTING_CALLS: Final = frozenset({"os.listdir", "os.scandir", "os.walk"})
_LISTING_METHODS: Final = frozenset({"iterdir", "glob", "rglob"})
#: Path components after /proc/ that name this process, not another one.
_SELF_COMPONENTS: Final = frozenset({"self", "thread-self"})

_WAITID_BY_NUMBER: Final = frozenset({"os.P_PID", "os.P_ALL", "os.P_PGID"})
# os.P_ALL, os.P_PID, os.P_PGID on Linux; P_PIDFD is 3.
_WAITID_BY_NUMBER_VALUES: Final = frozenset({0, 1, 2})
_SAFE_HANDLERS: Final = frozenset(
    {
        "signal.SIG_DFL",
        "signal.SIG_IGN",
        "signal.default_int_handler",
        "signal.Handlers.SIG_DFL",
        "signal.Handlers.SIG_IGN",
    }
)
#: Calls whose result is a previously installed handler: re-installing it restores, it does
#: not introduce a new handler.
_HANDLER_SOURCES: Final = frozenset({"signal.signal", "signal.getsignal"})
_PATH_CLASSES: Final = frozenset(
    {"pathlib.Path", "pathlib.PurePath", "pathlib.PosixPath", "pathlib.PurePosixPath"}
)
_PATH_JOINS: Final = frozenset({"os.path.join", "posixpath.join"})
_FORK_METHOD_SETTERS: Final = frozenset(
    {"multiprocessing.set_start_method", "multiprocessing.get_context"}
)
_GETPID: Final = frozenset({"os.getpid"})

#: Last components of every qualified name any rule looks at; an attribute whose name is not
#: here is skipped without resolving its chain (the common case, so this keeps the pass fast).
_INTERESTING_ATTRS: Final = frozenset(
    [name.rsplit(".", 1)[1] for name in REFERENCE_RULES]
    + [
        name.rsplit(".", 1)[1]
        for name in _WAITID_BY_NUMBER
        | _SAFE_HANDLERS
        | _HANDLER_SOURCES
        | _PATH_CLASSES
        | _PATH_JOINS
        | _FORK_METHOD_SETTERS
        | _GETPID
        | _LISTING_CALLS
        | {"os.waitid"}
    ]
)


def _string(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _is_proc_root(text: str | None) -> bool:
    return text in ("/proc", "/proc/")


def _first_element(node: ast.expr) -> ast.expr:
    """The first value a %-format consumes: the tuple's first element, else the operand."""
    if isinstance(node, ast.Tuple) and node.elts:
        return node.elts[0]
    return node


def _handler_key(node: ast.expr) -> str | None:
    """A name that identifies a stored handler: ``old``, ``self._old``, ``saved[sig]``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return "." + node.attr
    return None


class PrimitiveChecker(ScopeVisitor):
    """Collects raw findings for one module: `visit_module`, then `finish`."""

    def __init__(self) -> None:
        super().__init__(REFERENCE_RULES)
        self.raw: list[RawFinding] = []
        # Handlers saved from signal.signal()/getsignal(); re-installing them restores.
        self._saved_handlers: set[str] = set()
        self._deferred_handlers: list[tuple[ast.expr, str]] = []
        self.dispatch.update(
            {
                ast.Attribute: self._visit_attribute,
                ast.Call: self._visit_call,
                ast.Constant: self._visit_constant,
                ast.JoinedStr: self._visit_joined_str,
                ast.BinOp: self._visit_bin_op,
                ast.Expr: self._visit_expr,
            }
        )

    def finish(self) -> list[RawFinding]:
        """The raw findings, once the whole module has been visited."""
        for handler, key in self._deferred_handlers:
            if key not in self._saved_handlers:
                self.report(handler, "TET501", "signal.signal")
        return self.raw

    def report(self, node: ast.AST, code: str, primitive: str) -> None:
        line = getattr(node, "lineno", 1)
        end_line = getattr(node, "end_lineno", None) or line
        self.raw.append((line, end_line, getattr(node, "col_offset", 0), code, primitive))

    # -- hooks -----------------------------------------------------------------------------

    def assigned(self, node: ast.Assign) -> None:
        # `old = signal.signal(...)` saves a handler: installing `old` later restores it.
        value = node.value
        if isinstance(value, ast.Call) and self.resolve(value.func) in _HANDLER_SOURCES:
            for target in node.targets:
                key = _handler_key(target)
                if key is not None:
                    self._saved_handlers.add(key)

    # -- /proc paths -----------------------------------------------------------------------

    def _is_own_pid(self, node: ast.expr) -> bool:
        """`os.getpid()`, `str(os.getpid())`, or "self": a /proc path about this process."""
        if isinstance(node, ast.Constant):
            return node.value in _SELF_COMPONENTS
        if not isinstance(node, ast.Call):
            return False
        if isinstance(node.func, ast.Name) and node.func.id == "str" and len(node.args) == 1:
            return self._is_own_pid(node.args[0])
        return self.resolve(node.func) in _GETPID

    def _is_pid_component(self, node: ast.expr) -> bool:
        """Whether a path component after /proc/ names a PID (a number or a runtime value)."""
        if isinstance(node, ast.Constant):
            value = node.value
            return isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        if isinstance(node, ast.JoinedStr):
            return not self._is_own_pid_fstring(node)
        return not self._is_own_pid(node)

    def _is_own_pid_fstring(self, node: ast.JoinedStr) -> bool:
        first = node.values[0] if node.values else None
        if isinstance(first, ast.Constant):
            return str(first.value).partition("/")[0] in _SELF_COMPONENTS
        if isinstance(first, ast.FormattedValue):
            return self._is_own_pid(first.value)
        return False

    # -- node handlers ---------------------------------------------------------------------

    def _visit_attribute(self, node: ast.Attribute) -> None:
        if node.attr in _INTERESTING_ATTRS and isinstance(node.ctx, ast.Load):
            target = self.resolve(node)
            if target is not None:
                code = REFERENCE_RULES.get(target)
                if code is not None:
                    self.report(node, code, target)
                    return
        self.visit(node.value)

    def _visit_expr(self, node: ast.Expr) -> None:
        # A bare string statement is a docstring or comment; a path in prose reads nothing.
        if not isinstance(node.value, ast.Constant):
            self.visit(node.value)

    def _visit_constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, str):
            if value.startswith("/proc/") and _PROC_PID.match(value):
                self.report(node, "TET601", _PROC_PRIMITIVE)
        elif isinstance(value, bytes) and value.startswith(b"/proc/") and _PROC_PID_BYTES.match(
            value
        ):
            self.report(node, "TET601", _PROC_PRIMITIVE)

    def _visit_joined_str(self, node: ast.JoinedStr) -> None:
        values = node.values
        # f"/proc/{pid}/status": the literal part ends exactly where the PID goes.
        if (
            len(values) >= 2
            and _string(values[0]) == "/proc/"
            and isinstance(values[1], ast.FormattedValue)
            and not self._is_own_pid(values[1].value)
        ):
            self.report(node, "TET601", _PROC_PRIMITIVE)
        self.generic_visit(node)

    def _visit_bin_op(self, node: ast.BinOp) -> None:
        left = node.left
        op = node.op
        if isinstance(op, ast.Mod):
            # "/proc/%d/stat" % pid
            text = _string(left)
            if (
                text is not None
                and text.startswith("/proc/%")
                and not self._is_own_pid(_first_element(node.right))
            ):
                self.report(node, "TET601", _PROC_PRIMITIVE)
        elif isinstance(op, ast.Add):
            # "/proc/" + str(pid) + "/stat" parses as ("/proc/" + str(pid)) + "/stat".
            if _string(left) == "/proc/" and self._is_pid_component(node.right):
                self.report(node, "TET601", _PROC_PRIMITIVE)
        elif (
            isinstance(op, ast.Div)
            and self._is_proc_path_root(left)
            and self._is_pid_component(node.right)
        ):
            # Path("/proc") / str(pid) / "stat"
            self.report(node, "TET601", _PROC_PRIMITIVE)
        self.visit(left)
        self.visit(node.right)

    def _is_proc_path_root(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            return (
                self.resolve(node.func) in _PATH_CLASSES
                and _is_proc_root(_string(node.args[0]))
            )
        return False

    def _visit_call(self, node: ast.Call) -> None:
        func = node.func
        target: str | None = None
        if isinstance(func, ast.Name):
            target = self.aliases.get(func.id)
            if target is None and func.id == "getattr":
                self._check_getattr(node)
        elif isinstance(func, ast.Attribute):
            if func.attr in _INTERESTING_ATTRS:
                target = self.resolve(func)
            elif func.attr == "format":
                # "/proc/{}/stat".format(pid)
                text = _string(func.value)
                if text is not None and text.startswith("/proc/{"):
                    first = node.args[0] if node.args else None
                    if first is None and node.keywords:
                        first = node.keywords[0].value
                    if first is None or not self._is_own_pid(first):
                        self.report(node, "TET601", _PROC_PRIMITIVE)
            elif func.attr in _LISTING_METHODS and self._is_proc_path_root(func.value):
                # Path("/proc").iterdir(): walking the process table
                self.report(node, "TET601", _PROC_LISTING)
        if target is not None:
            self._check_call(node, target)
        self.generic_visit(node)

    def _argument(self, node: ast.Call, index: int, keyword: str) -> ast.expr | None:
        if len(node.args) > index:
            argument = node.args[index]
            return None if isinstance(argument, ast.Starred) else argument
        for kw in node.keywords:
            if kw.arg == keyword:
                return kw.value
        return None

    def _check_call(self, node: ast.Call, target: str) -> None:
        if target == "os.waitid":
            idtype = self._argument(node, 0, "idtype")
            if idtype is not None and (
                self.resolve(idtype) in _WAITID_BY_NUMBER
                or (
                    isinstance(idtype, ast.Constant)
                    and type(idtype.value) is int
                    and idtype.value in _WAITID_BY_NUMBER_VALUES
                )
            ):
                self.report(node, "TET302", "os.waitid")
        elif target == "signal.signal":
            self._check_signal_handler(node)
        elif target in _FORK_METHOD_SETTERS:
            method = self._argument(node, 0, "method")
            if method is not None and _string(method) == "fork":
                self.report(node, "TET105", target)
        elif target in _LISTING_CALLS:
            path = self._argument(node, 0, "path")
            if path is not None and _is_proc_root(_string(path)):
                self.report(node, "TET601", _PROC_LISTING)
        elif target in _PATH_CLASSES or target in _PATH_JOINS:
            # Path("/proc", str(pid)), os.path.join("/proc", pid, "stat")
            args = node.args
            if (
                len(args) >= 2
                and _is_proc_root(_string(args[0]))
                and self._is_pid_component(args[1])
            ):
                self.report(node, "TET601", _PROC_PRIMITIVE)

    def _check_signal_handler(self, node: ast.Call) -> None:
        handler = self._argument(node, 1, "handler")
        if handler is None or isinstance(handler, ast.Constant):
            return  # no handler given, or an int (0 is SIG_DFL, 1 is SIG_IGN)
        if self.resolve(handler) in _SAFE_HANDLERS:
            return
        key = _handler_key(handler)
        if key is not None:
            # Could be a saved handler being restored; decided once the whole module is seen.
            self._deferred_handlers.append((handler, key))
        else:
            self.report(handler, "TET501", "signal.signal")

    def _check_getattr(self, node: ast.Call) -> None:
        # getattr(os, "fork") is os.fork by another spelling.
        if len(node.args) >= 2:
            module = self.resolve(node.args[0])
            attribute = _string(node.args[1])
            if module is not None and attribute is not None:
                qualified = f"{module}.{attribute}"
                code = REFERENCE_RULES.get(qualified)
                if code is not None:
                    self.report(node, code, qualified)
