"""The few named errors the core raises. Each message is one line that names the bad value and the fix.

The core never prints or exits on failure; the CLI and the server map these to a message and an exit code / 4xx.
"""
from __future__ import annotations


class RetrievalError(Exception):
    """Base class: str(err) is a one-line, user-facing message."""

    exit_code = 1


class DatasetError(RetrievalError):
    """A data folder or file is missing or malformed (names file, line and fix)."""


class EncoderUnavailableError(RetrievalError):
    """Weights for an encoder cannot be loaded offline."""


class ModelNotFoundError(RetrievalError):
    """No readable model folder where one was expected."""


class ModelMismatchError(RetrievalError):
    """A model folder or index was built with other encoders / heads than the ones asked for."""


class IndexNotFoundError(RetrievalError):
    """No index folder where one was expected."""


class IndexVersionError(RetrievalError):
    """The index folder was written by a newer format than this version can read."""


class IndexOutdatedError(IndexVersionError):
    """The index folder was written by an older format (before the child detector): it must be rebuilt."""


class InvalidQueryError(RetrievalError):
    """Empty query, bad k, or similar user input."""

    exit_code = 2


class ImageDecodeError(RetrievalError):
    """One image could not be decoded; carries the reason so builds can skip and report it."""


class DetectorUnavailableError(RetrievalError):
    """A component of the child detector (face finder, crop encoder, heads) cannot be loaded: builds stop."""
