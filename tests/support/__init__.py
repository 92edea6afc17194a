"""Test helpers: a real registry, test images built from busybox, pytest fixtures."""
