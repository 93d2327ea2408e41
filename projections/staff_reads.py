"""Reads that need the staff projection as far as the log goes: ``case list --assignee``
filters the case index by its table, so every interface catches it up first."""

from __future__ import annotations

import contextlib

from eventsourcing.persistence import IntegrityError

from aftersales.engine.application.requests import Command, ListCases
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.runner import Projector
from aftersales.projections.staff import Staff


def catch_up_staff(store: AftersalesStore) -> None:
    """Apply the log's new events to the staff projection (another process doing the same
    just now: then what it wrote is read)."""
    with contextlib.suppress(IntegrityError):
        Projector(store).catch_up([Staff])


def staff_ready(store: AftersalesStore, command: Command) -> Command:
    """The command as given, the staff projection caught up first when it lists by member."""
    if isinstance(command, ListCases) and command.assignee:
        catch_up_staff(store)
    return command
