"""The package's exception types, in the bottom layer so that every layer can raise them."""

from __future__ import annotations


class DataError(ValueError):
    """Training data or metadata is missing, malformed or inconsistent."""
