"""``@frozen_record``: what ``@dataclass(frozen=True, slots=True)`` gave the value classes on
every start path (SpawnSpec, Exit, Limits, Usage), without importing dataclasses.

The one rule this module owns: a record is its annotated fields, in class-body order. It is
made by position or keyword (a field's default is its value in the class body), checked by
its ``__post_init__`` if it has one, and never changed after; it is equal to, and hashes
like, a record of the same class with equal fields; its repr is ``Name(field=value, ...)``;
``replace()`` makes a changed copy (``__post_init__`` runs again), and pickle and copy make
it again from its fields. Importing dataclasses costs inspect, ast, dis and tokenize, and
each dataclass compiles generated code at import (milliseconds of every ``tether run``,
benchmarks/ section 8); a record compiles nothing.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, TypeVar, dataclass_transform

__all__ = ["frozen_record", "replace"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def frozen_record(cls: type[_T]) -> type[_T]:
    """The class ``cls`` as a frozen record with ``__slots__`` (no base class may have fields)."""
    if type(cls) is not type:
        raise TypeError(f"{cls.__qualname__}: a record takes no metaclass")
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  (inspect: the cost)
    names = tuple(name for name, kind in annotations.items()
                  if not str(kind).startswith(("ClassVar", "typing.ClassVar")))
    # Fields named in __record_uncompared__ are kept and shown but neither compared nor
    # hashed (dataclasses' field(compare=False)).
    uncompared = set(cls.__dict__.get("__record_uncompared__", ()))
    compared = tuple(name for name in names if name not in uncompared)
    body = dict(cls.__dict__)
    defaults = {name: body.pop(name) for name in names if name in body}
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    title = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not kwargs and len(args) == len(names):  # every field by position: the start path
            for set_field, value in zip(setters, args):  # noqa: B905  (lengths checked)
                set_field(self, value)
            if self.__class__ is not made:
                _late_post_init(self)
            elif post_init is not None:
                post_init(self)
            return
        if len(args) > len(names):
            raise TypeError(f"{title}() takes {len(names)} positional arguments, "
                            f"{len(args)} were given")
        for name, value in zip(names, args, strict=False):  # (the rest by keyword)
            if name in kwargs:
                raise TypeError(f"{title}() got multiple values for argument {name!r}")
            object.__setattr__(self, name, value)
        for name in names[len(args):]:
            if name in kwargs:
                value = kwargs.pop(name)
            elif name in defaults:
                value = defaults[name]
            else:
                raise TypeError(f"{title}() missing required argument: {name!r}")
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{title}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if self.__class__ is not made:
            _late_post_init(self)
        elif post_init is not None:
            post_init(self)

    def fields(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{title}({shown})"

    def key(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in compared)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(key(self) == key(other))

    def __hash__(self: Any) -> int:
        return hash(key(self))

    def __setattr__(self: Any, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {title}")

    def __delattr__(self: Any, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {title}")

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return self.__class__, fields(self)

    body.update(
        __slots__=names, __match_args__=names, _record_fields=names, __init__=__init__,
        __repr__=__repr__, __eq__=__eq__, __hash__=__hash__, __setattr__=__setattr__,
        __delattr__=__delattr__, __reduce__=__reduce__,
    )
    for method in (__init__, __repr__, __eq__, __hash__, __setattr__, __delattr__,
                   __reduce__):
        method.__qualname__ = f"{title}.{method.__name__}"
    made = type(cls.__name__, cls.__bases__, body)  # (the records here have no metaclass)
    made.__qualname__ = title
    # Each slot's own setter, called directly (no attribute lookup by name per field).
    setters = tuple(made.__dict__[name].__set__ for name in names)
    # (as found in the class dict: a staticmethod or classmethod is bound by getattr(self))
    post_init = next((base.__dict__["__post_init__"] for base in made.__mro__
                      if "__post_init__" in base.__dict__), None)
    if post_init is not None and type(post_init) is not FunctionType:
        post_init = _late_post_init
    return made


def _late_post_init(record: Any) -> None:
    """``__post_init__`` looked up on the instance, as dataclasses do, for a record of a
    subclass (which may override it) or one whose ``__post_init__`` is no plain function (a
    staticmethod...). A record of the decorated class itself calls the function found at
    decoration, with no lookup."""
    late = getattr(record, "__post_init__", None)
    if late is not None:
        late()


def replace(record: _T, **changes: Any) -> _T:
    """A copy of ``record`` with ``changes`` (made again: its ``__post_init__`` runs)."""
    names: tuple[str, ...] = getattr(record, "_record_fields")  # noqa: B009  (not typed)
    values = {name: getattr(record, name) for name in names}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(record).__qualname__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(record)(**values)
