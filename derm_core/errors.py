"""One base class for every error DermTriage raises about its *inputs*.

A :class:`DermTriageError` is a problem the user can fix (a photo, a dataset, a model card,
a threshold profile, a command-line argument, a run folder); its message says what and where.
The command line prints it as one line and exits with code 2; the pages show it and keep
working. Anything else is a bug and keeps its traceback.

Each concrete error also keeps its historical base class (``DataError`` is still a
``ValueError``, ``JobError`` a ``RuntimeError``), so existing ``except`` clauses still work.
"""
from __future__ import annotations


class DermTriageError(Exception):
    """A user-fixable problem with an input, with a message naming the file and field."""


class ConfigError(DermTriageError, ValueError):
    """Invalid settings: a command-line argument or a training configuration."""


class RunFolderError(DermTriageError, RuntimeError):
    """A run folder that cannot be used now: in use by another process, or holding another run."""
