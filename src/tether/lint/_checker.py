"""The AST pass: one ``ast.parse`` and one visit per file, resolving import aliases on the way.

Names are resolved through the file's own imports (``import os as o``, ``from os import kill
as k``, ``import os.path``), never by their spelling alone, so ``child.kill()`` or a local
variable called ``wait`` cannot fire.  Function parameters and assignments that rebind an
imported name hide it for the rest of that scope.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from tether.lint._noqa import is_suppressed, suppressed_codes
from tether.lint._rules import (
    MODULE_SYNONYMS,
    REFERENCE_RULES,
    RULES_BY_CODE,
    enabled_codes,
)


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

# A raw finding before noqa and column conversion: (line, end_line, byte_col, code, primitive).
_Raw = tuple[int, int, int, str, str]

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

# Fields that never hold child nodes worth visiting (`ctx` is a shared Load/Store singleton).
_SKIPPED_FIELDS: Final = frozenset(
    {"ctx", "id", "attr", "name", "arg", "module", "level", "kind", "conversion", "type_comment"}
)
_CHILD_FIELDS: dict[type[ast.AST], tuple[str, ...]] = {}


def _child_fields(node_type: type[ast.AST]) -> tuple[str, ...]:
    fields = _CHILD_FIELDS.get(node_type)
    if fields is None:
        fields = tuple(f for f in node_type._fields if f not in _SKIPPED_FIELDS)
        _CHILD_FIELDS[node_type] = fields
    return fields


def _normalise_module(module: str) -> str:
    head, dot, rest = module.partition(".")
    synonym = MODULE_SYNONYMS.get(head)
    return synonym + dot + rest if synonym is not None else module


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


class _Visitor:
    """Collects raw findings for one module; see the module docstring for the resolution rules."""

    def __init__(self) -> None:
        self.raw: list[_Raw] = []
        # local name -> qualified name it refers to ("sp" -> "subprocess", "k" -> "os.kill").
        self._aliases: dict[str, str] = {}
        # One dict per enclosing function: the bindings it changed, to restore on exit.
        self._scopes: list[dict[str, str | None]] = []
        # Handlers saved from signal.signal()/getsignal(); re-installing them restores.
        self._saved_handlers: set[str] = set()
        self._deferred_handlers: list[tuple[ast.expr, str]] = []
        self._dispatch: dict[type[ast.AST], Callable[[Any], None]] = {
            ast.Import: self._visit_import,
            ast.ImportFrom: self._visit_import_from,
            ast.Name: self._visit_name,
            ast.Attribute: self._visit_attribute,
            ast.Call: self._visit_call,
            ast.Constant: self._visit_constant,
            ast.JoinedStr: self._visit_joined_str,
            ast.BinOp: self._visit_bin_op,
            ast.Expr: self._visit_expr,
            ast.Assign: self._visit_assign,
            ast.AnnAssign: self._visit_ann_assign,
            ast.FunctionDef: self._visit_function,
            ast.AsyncFunctionDef: self._visit_function,
            ast.Lambda: self._visit_lambda,
            ast.ClassDef: self._visit_class,
        }

    # -- traversal -------------------------------------------------------------------------

    def run(self, tree: ast.Module) -> list[_Raw]:
        # Module-level imports bind for the whole module, also for functions defined above
        # them (a late `import subprocess` is still what `subprocess` means at call time).
        self._prescan_imports(tree.body)
        self._visit_body(tree.body)
        for handler, key in self._deferred_handlers:
            if key not in self._saved_handlers:
                self._report(handler, "TET501", "signal.signal")
        return self.raw

    def visit(self, node: ast.AST) -> None:
        handler = self._dispatch.get(type(node))
        if handler is None:
            self._generic_visit(node)
        else:
            handler(node)

    def _generic_visit(self, node: ast.AST) -> None:
        visit = self.visit
        for field in _child_fields(type(node)):
            value = getattr(node, field, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        visit(item)
            elif isinstance(value, ast.AST):
                visit(value)

    def _visit_body(self, body: Iterable[ast.AST]) -> None:
        for statement in body:
            self.visit(statement)

    def _report(self, node: ast.AST, code: str, primitive: str) -> None:
        line = getattr(node, "lineno", 1)
        end_line = getattr(node, "end_lineno", None) or line
        self.raw.append((line, end_line, getattr(node, "col_offset", 0), code, primitive))

    # -- bindings --------------------------------------------------------------------------

    def _prescan_imports(self, body: list[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.Import):
                self._visit_import(statement)
            elif isinstance(statement, ast.ImportFrom):
                self._visit_import_from(statement)
            elif isinstance(statement, ast.If | ast.With):
                self._prescan_imports(statement.body)
                if isinstance(statement, ast.If):
                    self._prescan_imports(statement.orelse)
            elif isinstance(statement, ast.Try | ast.TryStar):
                self._prescan_imports(statement.body)
                for handler in statement.handlers:
                    self._prescan_imports(handler.body)
                self._prescan_imports(statement.orelse)
                self._prescan_imports(statement.finalbody)

    def _bind(self, name: str, target: str | None) -> None:
        aliases = self._aliases
        if self._scopes:
            saved = self._scopes[-1]
            if name not in saved:
                saved[name] = aliases.get(name)
        if target is None:
            aliases.pop(name, None)
        else:
            aliases[name] = target

    def _visit_import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = _normalise_module(alias.name)
            if alias.asname is not None:
                self._bind(alias.asname, module)
            else:
                # `import os.path` binds `os`, which is the os module.
                head = module.partition(".")[0]
                self._bind(alias.name.partition(".")[0], head)

    def _visit_import_from(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            return  # a relative import is this project's own module, never a stdlib one
        module = _normalise_module(node.module)
        for alias in node.names:
            if alias.name == "*":
                # Bind just the names a rule flags; `from os import *` does bind `kill`.
                prefix = module + "."
                for qualified in REFERENCE_RULES:
                    name = qualified.removeprefix(prefix)
                    if name != qualified and "." not in name:
                        self._bind(name, qualified)
                continue
            self._bind(alias.asname or alias.name, f"{module}.{alias.name}")

    def _enter_scope(self, params: ast.arguments) -> None:
        self._scopes.append({})
        for arg in (*params.posonlyargs, *params.args, *params.kwonlyargs):
            if arg.arg in self._aliases:
                self._bind(arg.arg, None)
        for star_arg in (params.vararg, params.kwarg):
            if star_arg is not None and star_arg.arg in self._aliases:
                self._bind(star_arg.arg, None)

    def _exit_scope(self) -> None:
        for name, target in self._scopes.pop().items():
            if target is None:
                self._aliases.pop(name, None)
            else:
                self._aliases[name] = target

    def _visit_defaults(self, params: ast.arguments) -> None:
        # Defaults are evaluated in the enclosing scope, before the parameters exist.
        for default in params.defaults:
            self.visit(default)
        for kw_default in params.kw_defaults:
            if kw_default is not None:
                self.visit(kw_default)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._visit_defaults(node.args)
        # Return and parameter annotations are not visited: a type names, it does not call.
        self._enter_scope(node.args)
        self._visit_body(node.body)
        self._exit_scope()
        if node.name in self._aliases:
            self._bind(node.name, None)

    def _visit_class(self, node: ast.ClassDef) -> None:
        for expression in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(expression)
        # Names bound in a class body (a method called `kill`) do not leak out of it.
        self._scopes.append({})
        self._visit_body(node.body)
        self._exit_scope()
        if node.name in self._aliases:
            self._bind(node.name, None)

    def _visit_lambda(self, node: ast.Lambda) -> None:
        self._visit_defaults(node.args)
        self._enter_scope(node.args)
        self.visit(node.body)
        self._exit_scope()

    def _visit_assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        value = node.value
        if isinstance(value, ast.Call) and self._resolve(value.func) in _HANDLER_SOURCES:
            for target in node.targets:
                key = _handler_key(target)
                if key is not None:
                    self._saved_handlers.add(key)
        if isinstance(value, ast.Constant):
            # `except ImportError: subprocess = None`: an import fallback, not a new meaning
            # for the name; any later use of it is still the module when it is used at all.
            for target in node.targets:
                if not isinstance(target, ast.Name):
                    self.visit(target)
            return
        for target in node.targets:
            self.visit(target)

    def _visit_ann_assign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    # -- resolution ------------------------------------------------------------------------

    def _resolve(self, node: ast.expr) -> str | None:
        """The qualified name `node` refers to through this module's imports, if any."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self._aliases.get(node.id)
        if base is None:
            return None
        parts.append(base)
        parts.reverse()
        return ".".join(parts)

    def _is_own_pid(self, node: ast.expr) -> bool:
        """`os.getpid()`, `str(os.getpid())`, or "self": a /proc path about this process."""
        if isinstance(node, ast.Constant):
            return node.value in _SELF_COMPONENTS
        if not isinstance(node, ast.Call):
            return False
        if isinstance(node.func, ast.Name) and node.func.id == "str" and len(node.args) == 1:
            return self._is_own_pid(node.args[0])
        return self._resolve(node.func) in _GETPID

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

    def _visit_name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            target = self._aliases.get(node.id)
            if target is not None:
                code = REFERENCE_RULES.get(target)
                if code is not None:
                    self._report(node, code, target)
        elif node.id in self._aliases:
            # Rebinding an imported name (`kill = child.kill`) hides the import from here on.
            self._bind(node.id, None)

    def _visit_attribute(self, node: ast.Attribute) -> None:
        if node.attr in _INTERESTING_ATTRS and isinstance(node.ctx, ast.Load):
            target = self._resolve(node)
            if target is not None:
                code = REFERENCE_RULES.get(target)
                if code is not None:
                    self._report(node, code, target)
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
                self._report(node, "TET601", _PROC_PRIMITIVE)
        elif isinstance(value, bytes) and value.startswith(b"/proc/") and _PROC_PID_BYTES.match(
            value
        ):
            self._report(node, "TET601", _PROC_PRIMITIVE)

    def _visit_joined_str(self, node: ast.JoinedStr) -> None:
        values = node.values
        # f"/proc/{pid}/status": the literal part ends exactly where the PID goes.
        if (
            len(values) >= 2
            and _string(values[0]) == "/proc/"
            and isinstance(values[1], ast.FormattedValue)
            and not self._is_own_pid(values[1].value)
        ):
            self._report(node, "TET601", _PROC_PRIMITIVE)
        self._generic_visit(node)

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
                self._report(node, "TET601", _PROC_PRIMITIVE)
        elif isinstance(op, ast.Add):
            # "/proc/" + str(pid) + "/stat" parses as ("/proc/" + str(pid)) + "/stat".
            if _string(left) == "/proc/" and self._is_pid_component(node.right):
                self._report(node, "TET601", _PROC_PRIMITIVE)
        elif (
            isinstance(op, ast.Div)
            and self._is_proc_path_root(left)
            and self._is_pid_component(node.right)
        ):
            # Path("/proc") / str(pid) / "stat"
            self._report(node, "TET601", _PROC_PRIMITIVE)
        self.visit(left)
        self.visit(node.right)

    def _is_proc_path_root(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            return (
                self._resolve(node.func) in _PATH_CLASSES
                and _is_proc_root(_string(node.args[0]))
            )
        return False

    def _visit_call(self, node: ast.Call) -> None:
        func = node.func
        target: str | None = None
        if isinstance(func, ast.Name):
            target = self._aliases.get(func.id)
            if target is None and func.id == "getattr":
                self._check_getattr(node)
        elif isinstance(func, ast.Attribute):
            if func.attr in _INTERESTING_ATTRS:
                target = self._resolve(func)
            elif func.attr == "format":
                # "/proc/{}/stat".format(pid)
                text = _string(func.value)
                if text is not None and text.startswith("/proc/{"):
                    first = node.args[0] if node.args else None
                    if first is None and node.keywords:
                        first = node.keywords[0].value
                    if first is None or not self._is_own_pid(first):
                        self._report(node, "TET601", _PROC_PRIMITIVE)
            elif func.attr in _LISTING_METHODS and self._is_proc_path_root(func.value):
                # Path("/proc").iterdir(): walking the process table
                self._report(node, "TET601", _PROC_LISTING)
        if target is not None:
            self._check_call(node, target)
        self._generic_visit(node)

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
                self._resolve(idtype) in _WAITID_BY_NUMBER
                or (
                    isinstance(idtype, ast.Constant)
                    and type(idtype.value) is int
                    and idtype.value in _WAITID_BY_NUMBER_VALUES
                )
            ):
                self._report(node, "TET302", "os.waitid")
        elif target == "signal.signal":
            self._check_signal_handler(node)
        elif target in _FORK_METHOD_SETTERS:
            method = self._argument(node, 0, "method")
            if method is not None and _string(method) == "fork":
                self._report(node, "TET105", target)
        elif target in _LISTING_CALLS:
            path = self._argument(node, 0, "path")
            if path is not None and _is_proc_root(_string(path)):
                self._report(node, "TET601", _PROC_LISTING)
        elif target in _PATH_CLASSES or target in _PATH_JOINS:
            # Path("/proc", str(pid)), os.path.join("/proc", pid, "stat")
            args = node.args
            if (
                len(args) >= 2
                and _is_proc_root(_string(args[0]))
                and self._is_pid_component(args[1])
            ):
                self._report(node, "TET601", _PROC_PRIMITIVE)

    def _check_signal_handler(self, node: ast.Call) -> None:
        handler = self._argument(node, 1, "handler")
        if handler is None or isinstance(handler, ast.Constant):
            return  # no handler given, or an int (0 is SIG_DFL, 1 is SIG_IGN)
        if self._resolve(handler) in _SAFE_HANDLERS:
            return
        key = _handler_key(handler)
        if key is not None:
            # Could be a saved handler being restored; decided once the whole module is seen.
            self._deferred_handlers.append((handler, key))
        else:
            self._report(handler, "TET501", "signal.signal")

    def _check_getattr(self, node: ast.Call) -> None:
        # getattr(os, "fork") is os.fork by another spelling.
        if len(node.args) >= 2:
            module = self._resolve(node.args[0])
            attribute = _string(node.args[1])
            if module is not None and attribute is not None:
                qualified = f"{module}.{attribute}"
                code = REFERENCE_RULES.get(qualified)
                if code is not None:
                    self._report(node, code, qualified)


def _column(line_text: str, byte_offset: int) -> int:
    """1-based character column from the AST's UTF-8 byte offset."""
    if line_text.isascii():
        return byte_offset + 1
    return len(line_text.encode("utf-8")[:byte_offset].decode("utf-8", "replace")) + 1


def findings_for_tree(
    tree: ast.Module, source: str, path: str, enabled: frozenset[str]
) -> list[Finding]:
    """The findings in an already parsed module, after rule selection and ``# noqa``."""
    raw = _Visitor().run(tree)
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
