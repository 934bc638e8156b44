"""One base class for every error DermTriage raises about its *inputs*.

A :class:`DermTriageError` is a problem the user can fix (a photo, a dataset, a model card,
a threshold profile, a command-line argument, a run folder); its message says what and where.
The command line prints it as one line and exits with code 2; the pages show it and keep
working. Anything else is a bug and keeps its traceback.

Every user-error class is defined here (and re-exported by the module that raises it), so
the CLI and the pages can rely on one base. Each concrete error also keeps its historical base class (``DataError`` is still a
``ValueError``, ``JobError`` a ``RuntimeError``), so existing ``except`` clauses still work.
"""
from __future__ import annotations


class DermTriageError(Exception):
    """A user-fixable problem with an input, with a message naming the file and field."""


class ConfigError(DermTriageError, ValueError):
    """Invalid settings: a command-line argument or a training configuration."""


class RunFolderError(DermTriageError, RuntimeError):
    """A run folder that cannot be used now: in use by another process, or holding another run."""


class DataError(DermTriageError, ValueError):
    """A dataset problem, naming the file and row to fix."""


class ImageError(DermTriageError, ValueError):
    """A photo that cannot be used, with a human-readable reason."""


class ModelError(DermTriageError, ValueError):
    """A model file that cannot be used, with the reason."""


class ProfileError(DermTriageError, ValueError):
    """A threshold profile that cannot be used, with the reason."""


class StudyError(DermTriageError, ValueError):
    """A study that cannot be set up as asked (e.g. too few distinct lesions), with the reason."""


class MRMCError(StudyError):
    """Reader data a multi-reader multi-case analysis cannot use (too few readers, one class, not fully crossed)."""


class StudyStoreError(DermTriageError, RuntimeError):
    """The study database cannot be used (damaged, foreign, newer, locked, unwritable), with its path."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class StudyIntegrityError(StudyStoreError):
    """A write the schema refused (an impossible row); nothing was written."""


class AlreadyAnswered(StudyIntegrityError):
    """This reader already answered this case (e.g. a second tab, a double click)."""


class JobError(DermTriageError, RuntimeError):
    """A job that cannot be started or controlled, with the reason."""


class ConformalError(DermTriageError, ValueError):
    """A conformal calibration (or level) that cannot be used with this model, with the reason."""


class CacheError(DermTriageError, ValueError):
    """A cached file (predictions, embeddings for the similar-case index, layouts) that is not
    this model's and data's, or is malformed: ignored and recomputed, never used."""
