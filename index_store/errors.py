"""Errors of the index store. Each message is one line naming the bad value and the command that fixes it; the
application's edge (retrieval's CLI and server) shows them like its own."""
from __future__ import annotations


class IndexStoreError(Exception):
    """Base class: str(err) is a one-line, user-facing message."""

    exit_code = 1


class IndexNotFoundError(IndexStoreError):
    """No index (or an unreadable / inconsistent one) where one was expected."""


class IndexVersionError(IndexStoreError):
    """The index was written by a newer format than this version can read."""


class IndexOutdatedError(IndexVersionError):
    """The index was written by an older format: it must be rebuilt."""


class IdentityMismatchError(IndexStoreError):
    """The index was built for another model / encoders than the reader expects."""


class InvalidLocationError(IndexStoreError):
    """The index location cannot hold an index (a file, or a non-empty folder that is not an index)."""
