"""Test helpers: a real registry, test images built from busybox, daemons, pods, pytest fixtures.

Only fixtures.py and monitor_fixtures.py import pytest: bench/ uses the other
modules with the `bench` extra alone (tests/unit/test_support_without_pytest.py).
"""
