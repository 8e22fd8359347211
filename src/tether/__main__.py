"""``python -m tether`` is the ``tether`` command."""

from __future__ import annotations

from tether.cli import command

if __name__ == "__main__":
    command()
