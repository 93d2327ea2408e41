"""Who a case or an order is about, and the check that a principal acts only as its own party."""

from __future__ import annotations

from uuid import UUID

from aftersales.engine.access.principal_store import find_principal, has_principals
from aftersales.engine.access.scopes import check_actor, who_may
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    Action,
    BuyerAction,
    CaseAction,
    Command,
    PlaceOrder,
    ShopAction,
    ShowAssignment,
    ShowBuyer,
    ShowCase,
    ShowShop,
)
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.order import Order, order_uuid
from aftersales.engine.domain.values import Role

# Who a case or an order is about --------------------------------------------------------------


def case_parties(engine: Engine, case_id: UUID) -> tuple[str, str] | None:
    """A case's merchant and buyer (they never change): from the aggregate cache when this
    process has the case, else from the case index; None if there is no such case."""
    cached = engine.store.cached(case_id)
    if isinstance(cached, ReturnCase):
        return cached.merchant_id, cached.buyer_id
    rows = engine.store.query(
        "SELECT merchant_id, buyer_id FROM {t}aftersales_cases WHERE case_id = ?", [str(case_id)]
    )
    return (rows[0]["merchant_id"], rows[0]["buyer_id"]) if rows else None


def order_parties(engine: Engine, order_id: str) -> tuple[str, str] | None:
    cached = engine.store.cached(order_uuid(order_id))
    order = cached if isinstance(cached, Order) else engine.find_order(order_id)
    return (order.merchant_id, order.buyer_id) if order is not None else None


def parties(engine: Engine, command: Command) -> tuple[str, str] | None:
    """The merchant and buyer of what a command is about; None if it is not there (the
    command is then refused as not found by the engine, or not reachable over HTTP)."""
    if isinstance(command, PlaceOrder):
        return command.merchant, command.buyer
    if isinstance(command, (ShopAction, ShowShop)):  # a shop is its merchant's, no buyer's
        return command.merchant_id, ""
    if isinstance(command, (BuyerAction, ShowBuyer)):  # a buyer's standing: no merchant's
        return "", command.buyer_id
    case_id = getattr(command, "case_id", None)
    if isinstance(command, (CaseAction, ShowCase, ShowAssignment)) and isinstance(case_id, UUID):
        return case_parties(engine, case_id)
    order_id = getattr(command, "order_id", None)
    if isinstance(order_id, str):
        return order_parties(engine, order_id)
    return None


class ActorCheck:
    """The command line records honestly: once a store has principals, an action's ``--by``
    must name a principal who may take it on that case (stores without principals, such as the
    demo's and those made before, are as they were). Whether the store has principals is read
    once, when the check is made."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active = has_principals(engine.store)

    def __call__(self, command: Command) -> Command:
        if not self.active or not isinstance(command, Action) or command.role is Role.SYSTEM:
            return command
        name = command.name
        if command.by is None:
            raise NotAllowed(
                f"this store has principals: --by must name the one acting "
                f"(who may {name}: {', '.join(who_may(name))})"
            )
        principal = find_principal(self.engine.store, command.by)
        if principal is None:
            raise NotAllowed(
                f"--by {command.by} is not a principal of this store "
                f"(who may {name}: {', '.join(who_may(name))})"
            )
        found = parties(self.engine, command)
        if found is not None:  # else the engine says there is no such case or order
            check_actor(principal, command, *found)
        return command
