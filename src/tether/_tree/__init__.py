"""L1, the tree layer: a contained process tree and the handles on it.

Built on ``tether._kernel`` only. The seam is :class:`tether._tree.seam.Tree`, implemented by
the guarded backend (``guarded``) and the unguarded one (``direct``); ``Child``, ``run()``,
``tether.aio`` and the CLI speak to a tree only through it.
"""
