"""``python -m tether.lint [PATH...]``: the same as ``tether lint``."""

from tether.lint._cli import main

raise SystemExit(main())
