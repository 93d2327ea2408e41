"""Errors the engine raises. Each says, in the domain's words, what rule or input was wrong,
and carries a code (``bad_input``, ``not_allowed``, ...); the interfaces map the code to an exit
code or an HTTP status."""

from __future__ import annotations


class AftersalesError(Exception):
    """Base of every refusal; a refused action appends nothing."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        """The error as an interface shows it: its code and message (and, for some, where)."""
        return {"code": self.code, "message": self.message}


class BadInput(AftersalesError):
    """Malformed or inconsistent input: unknown option value, bad money or time."""

    code = "bad_input"


class NotAllowed(AftersalesError):
    """The rules do not allow this action in the case's (or order's) current state."""

    code = "not_allowed"


class NotFound(AftersalesError):
    """No such case or order."""

    code = "not_found"


class Conflict(AftersalesError):
    """A concurrent change that retrying did not resolve, or a stale expected version."""

    code = "conflict"


class StoreUnavailable(AftersalesError):
    """The event store cannot be reached or opened."""

    code = "store_unavailable"


class Poisoned(AftersalesError):
    """A stored event that cannot be read or verified: what needs it refuses, naming it (its
    position in the log, its aggregate and version, why), and nothing is guessed around it."""

    code = "poisoned"

    def __init__(
        self,
        position: int | None,
        what: str,
        version: int,
        why: str,
        *,
        consequence: str = "refused until the store is repaired",
        topic: str = "",
    ) -> None:
        where = f"position {position}" if position is not None else "an unknown position"
        super().__init__(
            f"stored event at {where} ({what}, version {version}) cannot be used: {why}"
            + (f"; {consequence}" if consequence else "")
        )
        self.position = position
        self.what = what
        self.version = version
        self.why = why
        self.topic = topic

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "position": self.position, "version": self.version}

    def then(self, consequence: str) -> Poisoned:
        """The same event named, with what its refusal means here."""
        return Poisoned(
            self.position,
            self.what,
            self.version,
            self.why,
            consequence=consequence,
            topic=self.topic,
        )
