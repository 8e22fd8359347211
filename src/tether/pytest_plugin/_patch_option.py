"""``--tether-patch``: run the whole test session with :func:`tether.patching.patch` in effect.

The one rule this module owns: with the option (or ``tether_patch = true`` in the ini file)
the stdlib's ``subprocess`` and ``asyncio.create_subprocess_*`` are tether's from configure
to unconfigure, so every process the tests (and the libraries they exercise) start is in a
contained tree; without it nothing is imported or touched. Independent of ``--tether``.
"""

from __future__ import annotations

import pytest

__all__ = ["add_patch_option", "configure_patch"]


def add_patch_option(parser: pytest.Parser) -> None:
    group = parser.getgroup("tether")
    group.addoption(
        "--tether-patch", action="store_true", default=None,
        help="route the stdlib's subprocess and asyncio.create_subprocess_* through tether "
        "for the session (tether.patching.patch(); ini: tether_patch = true)",
    )
    parser.addini("tether_patch", "run the session under tether.patching.patch() "
                  "(like --tether-patch)", type="bool", default=False)


def configure_patch(config: pytest.Config) -> None:
    value = config.getoption("tether_patch")
    if not (config.getini("tether_patch") if value is None else value):
        return
    # Imported here: the plugin loads in every pytest run; asyncio only where asked for.
    from tether.patching import patch, unpatch

    patch()
    config.add_cleanup(unpatch)
