"""The base of every stored event: a frozen pydantic model the library can mutate aggregates with.

Each event carries, besides the library's id, version and ``timestamp`` (when it was recorded):
``at``, when it happened in the world; ``actor``, who acted (role and id); and ``command_id``, the
key that makes a retried command change nothing. Events are stored as plain JSON of these fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import CanInitAggregate, CanMutateAggregate
from pydantic import BaseModel, ConfigDict

from engine.values import Actor, DueAction


class Event(BaseModel, CanMutateAggregate[UUID]):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bumped when an event class changes shape; old shapes are upcast on reading
    # by ``upcast_v{n}_v{n+1}`` class methods, as the library does for its own events.
    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    at: datetime
    actor: Actor
    command_id: str

    def apply(self, aggregate: Any) -> None:
        aggregate.when(self)


class Created(Event, CanInitAggregate[UUID]):
    originator_topic: str


class Deadline(BaseModel):
    """A running deadline: what the system does at ``due_at`` if nobody acts first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    due_at: datetime
    action: DueAction
    policy_version: str


class Act(BaseModel):
    """One action's circumstances, handed to the domain by the service (which owns the clock)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    actor: Actor
    command_id: str
    recorded_at: datetime

    def fields(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "command_id": self.command_id,
            "timestamp": self.recorded_at,
        }
