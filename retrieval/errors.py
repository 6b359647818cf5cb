"""The few named errors the core raises. Each message is one line that names the bad value and the fix.

The core never prints or exits on failure; the CLI and the server map `USER_ERRORS` (these and the index store's,
re-exported here) to a message and an exit code / HTTP status.
"""
from __future__ import annotations

from index_store.errors import (IdentityMismatchError, IndexNotFoundError, IndexOutdatedError, IndexStoreError,
                                IndexVersionError, InvalidLocationError)

__all__ = ["RetrievalError", "DatasetError", "EncoderUnavailableError", "ModelNotFoundError", "ModelMismatchError",
           "InvalidQueryError", "ImageDecodeError", "DetectorUnavailableError", "IndexStoreError",
           "IndexNotFoundError", "IndexVersionError", "IndexOutdatedError", "IdentityMismatchError",
           "InvalidLocationError", "USER_ERRORS"]


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


class InvalidQueryError(RetrievalError):
    """Empty query, bad k, or similar user input."""

    exit_code = 2


class ImageDecodeError(RetrievalError):
    """One image could not be decoded; carries the reason so builds can skip and report it."""


class DetectorUnavailableError(RetrievalError):
    """A component of the child detector (face finder, crop encoder, heads) cannot be loaded: builds stop."""


#: What the edge (CLI, server) reports as a one-line message instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (RetrievalError, IndexStoreError)
