"""The package's version, kept equal to pyproject.toml's and authgate's
(tests/api/clients.rs checks)."""

__version__ = "0.1.0"
