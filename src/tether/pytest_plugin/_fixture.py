"""The ``tether_spawn`` fixture: programs a test starts through it end with the test.

The one rule this module owns: every child the fixture started is killed and reaped, with its
whole tree, before the test's leak check runs -- through its pidfd and guard, never by number.
It works with or without ``--tether``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tether._tree.child import Child, spawn

__all__ = ["tether_spawn"]


@pytest.fixture
def tether_spawn() -> Iterator[Callable[..., Child]]:
    """A function that starts a program with :func:`tether.spawn` (same arguments) and
    returns its :class:`tether.Child`; every child it started is killed and reaped, with its
    whole tree, when the test ends.

    Guarantee: each child is contained and lifelined by tether.spawn (it cannot outlive
    pytest), and is gone -- killed through its pidfd and guard, never by number -- before the
    test's leak check runs.
    """
    children: list[Child] = []

    def start(argv: Sequence[Any], **kwargs: Any) -> Child:
        child = spawn(argv, **kwargs)
        children.append(child)
        return child

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for child in reversed(children):
            try:
                child.__exit__(None, None, None)  # kill and reap the tree, close the pipes
            except BaseException as exc:  # finish the others before reporting
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup("tether_spawn: errors while ending children", errors)
