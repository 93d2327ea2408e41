"""The projections there are. A new projection is a module with a ``View`` and one line here."""

from __future__ import annotations

from aftersales.engine.domain.errors import BadInput
from aftersales.projections.base import View
from aftersales.projections.dashboard import Dashboard
from aftersales.projections.ledger import Ledger
from aftersales.projections.notify import Notify
from aftersales.projections.platform_measures import PlatformMeasures
from aftersales.projections.return_rates import ReturnRates
from aftersales.projections.staff import Staff

VIEWS: tuple[type[View], ...] = (
    Dashboard,
    ReturnRates,
    Ledger,
    PlatformMeasures,
    Staff,
    # Last: what the buyer is told follows every other view.
    Notify,
)


def select(name: str | None) -> tuple[type[View], ...]:
    """All views, or the one named."""
    if name is None:
        return VIEWS
    for view in VIEWS:
        if view.name == name:
            return (view,)
    names = ", ".join(v.name for v in VIEWS)
    raise BadInput(f"no projection {name!r} (projections: {names})")
