"""The package's exception types, in the bottom layer so that every layer can raise them.

Every error a user can fix (a bad config key, malformed data, a missing, unsafe or corrupt file,
an unreachable judge) derives from :class:`HyperSteerError`; the command-line entry points catch
that one class and print its message as one line with exit status 2. Anything else is a bug and
keeps its traceback. Each class also derives from the builtin it refines (``ValueError``,
``FileNotFoundError``, ...) so callers that caught the builtin still do.
"""

from __future__ import annotations


class HyperSteerError(Exception):
    """Base of every user-facing error; the message names the file, key or value at fault."""


class ConfigError(HyperSteerError, ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


class DataError(HyperSteerError, ValueError):
    """Training data or metadata is missing, malformed or inconsistent."""


class MissingFileError(HyperSteerError, FileNotFoundError):
    """A file or checkpoint the command needs does not exist."""


class UnsafeFileError(HyperSteerError, ValueError):
    """A file would need arbitrary code execution (pickle) to load."""


class CorruptFileError(HyperSteerError, ValueError):
    """A file exists but cannot be parsed (truncated, wrong format, invalid JSON)."""
