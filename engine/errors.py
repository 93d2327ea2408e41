"""Errors the engine raises, each with the exit code and error code of the contract."""

from __future__ import annotations


class AftersalesError(Exception):
    """Base of every refusal; a refused action appends nothing."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(AftersalesError):
    """Malformed or inconsistent input: unknown option value, bad money or time."""

    exit_code = 2
    code = "bad_input"


class NotAllowed(AftersalesError):
    """The rules do not allow this action in the case's (or order's) current state."""

    exit_code = 3
    code = "not_allowed"


class NotFound(AftersalesError):
    """No such case or order."""

    exit_code = 4
    code = "not_found"


class Conflict(AftersalesError):
    """A concurrent change that retrying did not resolve, or a stale expected version."""

    exit_code = 5
    code = "conflict"


class StoreUnavailable(AftersalesError):
    """The event store cannot be reached or opened."""

    exit_code = 1
    code = "store_unavailable"
