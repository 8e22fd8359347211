"""Proof suites: tests that try to break every tether guarantee (see docs/proof.md).

A package (not a bare directory) so that its conftest and helpers get module names of their
own (``proof.conftest``, ``proof._harness``) and never shadow ``tests/conftest.py``.
"""
