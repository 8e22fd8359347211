"""Name resolution for the AST pass: imports, aliases, scopes and binding.

This module owns one rule: a name means what the file's own imports bind it to, never what it
is spelt like.  ``import os as o``, ``from os import kill as k`` and ``import os.path`` bind;
a function parameter, an assignment, a ``def`` or a ``class`` that rebinds an imported name
hides it for the rest of that scope, and names bound inside a function or class body do not
leak out of it.  So ``child.kill()`` or a local variable called ``wait`` resolves to nothing.

`ScopeVisitor` walks a module keeping that mapping current and hands a subclass, which owns
the checks, every load of a name bound to a primitive it flags.
"""

from __future__ import annotations

import ast
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from tether.lint._rules import MODULE_SYNONYMS

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


class ScopeVisitor(ABC):
    """Walks one module with every name resolved through its imports; subclasses add checks.

    `flagged` maps the qualified names a subclass reports wherever they are referenced to
    their rule codes: a load of a name bound to one is passed to `report`, and a star import
    binds just those names.  A subclass adds its handlers to `dispatch` (node type ->
    handler; a node with none is walked by `generic_visit`), asks `resolve` or `aliases` what
    a name means, and implements the hooks `report` and `assigned`.  `visit_module` walks
    a module.
    """

    def __init__(self, flagged: Mapping[str, str]) -> None:
        self._flagged = flagged
        #: local name -> qualified name it refers to ("sp" -> "subprocess", "k" -> "os.kill").
        #: Read-only outside this class: bindings change only as the walk meets them.
        self.aliases: dict[str, str] = {}
        # One dict per enclosing function: the bindings it changed, to restore on exit.
        self._scopes: list[dict[str, str | None]] = []
        self.dispatch: dict[type[ast.AST], Callable[[Any], None]] = {
            ast.Import: self._visit_import,
            ast.ImportFrom: self._visit_import_from,
            ast.Name: self._visit_name,
            ast.Assign: self._visit_assign,
            ast.AnnAssign: self._visit_ann_assign,
            ast.FunctionDef: self._visit_function,
            ast.AsyncFunctionDef: self._visit_function,
            ast.Lambda: self._visit_lambda,
            ast.ClassDef: self._visit_class,
        }

    # -- hooks -----------------------------------------------------------------------------

    @abstractmethod
    def report(self, node: ast.AST, code: str, primitive: str) -> None:
        """Record a use of `primitive`, flagged by rule `code`, at `node`."""

    @abstractmethod
    def assigned(self, node: ast.Assign) -> None:
        """Called for each assignment once its value is visited, before its targets bind."""

    # -- traversal -------------------------------------------------------------------------

    def visit_module(self, tree: ast.Module) -> None:
        """Walk a whole module."""
        # Module-level imports bind for the whole module, also for functions defined above
        # them (a late `import subprocess` is still what `subprocess` means at call time).
        self._prescan_imports(tree.body)
        self._visit_body(tree.body)

    def visit(self, node: ast.AST) -> None:
        handler = self.dispatch.get(type(node))
        if handler is None:
            self.generic_visit(node)
        else:
            handler(node)

    def generic_visit(self, node: ast.AST) -> None:
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

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, node: ast.expr) -> str | None:
        """The qualified name `node` refers to through this module's imports, if any."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.aliases.get(node.id)
        if base is None:
            return None
        parts.append(base)
        parts.reverse()
        return ".".join(parts)

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
        aliases = self.aliases
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
                for qualified in self._flagged:
                    name = qualified.removeprefix(prefix)
                    if name != qualified and "." not in name:
                        self._bind(name, qualified)
                continue
            self._bind(alias.asname or alias.name, f"{module}.{alias.name}")

    def _visit_name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            target = self.aliases.get(node.id)
            if target is not None:
                code = self._flagged.get(target)
                if code is not None:
                    self.report(node, code, target)
        elif node.id in self.aliases:
            # Rebinding an imported name (`kill = child.kill`) hides the import from here on.
            self._bind(node.id, None)

    def _enter_scope(self, params: ast.arguments) -> None:
        self._scopes.append({})
        for arg in (*params.posonlyargs, *params.args, *params.kwonlyargs):
            if arg.arg in self.aliases:
                self._bind(arg.arg, None)
        for star_arg in (params.vararg, params.kwarg):
            if star_arg is not None and star_arg.arg in self.aliases:
                self._bind(star_arg.arg, None)

    def _exit_scope(self) -> None:
        for name, target in self._scopes.pop().items():
            if target is None:
                self.aliases.pop(name, None)
            else:
                self.aliases[name] = target

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
        if node.name in self.aliases:
            self._bind(node.name, None)

    def _visit_class(self, node: ast.ClassDef) -> None:
        for expression in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(expression)
        # Names bound in a class body (a method called `kill`) do not leak out of it.
        self._scopes.append({})
        self._visit_body(node.body)
        self._exit_scope()
        if node.name in self.aliases:
            self._bind(node.name, None)

    def _visit_lambda(self, node: ast.Lambda) -> None:
        self._visit_defaults(node.args)
        self._enter_scope(node.args)
        self.visit(node.body)
        self._exit_scope()

    def _visit_assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        self.assigned(node)
        if isinstance(node.value, ast.Constant):
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
