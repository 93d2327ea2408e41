"""Reads as of now: a case, an order or a list shown as the clock has made it by the read's
time, without the read recording anything.

The tick fires deadlines when it runs; between ticks a case whose deadline has passed is still
stored in the status it waited in. A read does what an action does first
(``Engine._clock_first``, engine/application/handler.py): it fires, in memory, every deadline due
by its time, exactly as the tick will (the system, at the deadline's own time), and shows the
state that leaves, with what it applied under ``pending_clock``. It does so on copies
(``ReadCopies``): nothing is saved, and no aggregate a later write may use (the library's
aggregate cache, a chunk's or a group's aggregates in memory) is changed.
"""

from __future__ import annotations

from copy import deepcopy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aftersales.engine.application.requests import Action
from aftersales.engine.application.units import Attempt, OrderOrCase, SaveNow, UnitOfWork

if TYPE_CHECKING:  # the engine runs units of work; they only name it
    from aftersales.engine.application.handler import Engine


class ReadCopies(UnitOfWork):
    """A read's unit of work: each aggregate as the unit of work around it gives it, as a
    copy of its own (a fresh load needs none), so the clock can act on it in memory; it saves
    nothing and runs no action."""

    def __init__(self, engine: Engine, inner: UnitOfWork) -> None:
        super().__init__(engine)
        self.inner = inner
        # A SaveNow outside an action loads every aggregate fresh from the store.
        self.fresh = isinstance(inner, SaveNow) and not inner.use_cache
        self.copies: dict[UUID, OrderOrCase | None] = {}

    def get(self, uid: UUID) -> OrderOrCase | None:
        if uid not in self.copies:
            found = self.inner.get(uid)
            self.copies[uid] = found if found is None or self.fresh else deepcopy(found)
        return self.copies[uid]

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        raise TypeError(f"a read records nothing: {command.action} is not run inside one")


def as_of_time(engine: Engine, at: datetime | None) -> datetime:
    """The time a read is as of: the one it names, else the engine's clock."""
    return (at or engine.clock()).astimezone(UTC)
