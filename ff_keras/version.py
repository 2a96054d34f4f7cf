"""The package version (also pyproject.toml's; tests/test_packaging.py keeps the two equal), written
into every model sidecar."""

__version__ = "0.1.0"
