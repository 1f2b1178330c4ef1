"""The one exception of the command line, in a module light enough for the supervisor."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: printed as one line, the command exits with status 2."""
