"""The kernelscale version, in a module of its own so that any module (the manifest writer, the
CLI's ``--version``) reads it without importing the package root, which imports the public API."""

__version__ = "0.1.0"  # the same as ``version`` in pyproject.toml (tests/test_cli.py checks)
