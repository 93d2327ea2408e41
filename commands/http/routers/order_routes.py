"""Reading an order (placing, shipping and delivering it are actions: action_routes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import AS_OF_QUERY, ORDER_ID, OrderView, responses
from aftersales.engine.access.actor_checks import order_parties
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ShowOrder

router = APIRouter()


@router.get(
    "/v1/orders/{order_id}",
    tags=["orders"],
    summary=ShowOrder.__doc__,
    response_model=None,
    responses=responses(OrderView, 404, 422, headers=["ETag"]),
    openapi_extra={
        "parameters": [
            {"name": "order_id", "in": "path", "required": True, "schema": ORDER_ID},
            AS_OF_QUERY,
        ]
    },
)
async def show_order(request: Request, order_id: str, api: ApiDep, at: str | None = None) -> Any:
    # A read shows what the clock has done by now, or by ``?at=`` (engine/application/as_of.py).
    as_of = {"at": at} if at is not None else {}

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, ShowOrder.name)
        command = ShowOrder.parse({"order_id": order_id, **as_of})
        refuse_unseen(principal, order_parties(engine, order_id), f"order {order_id}")
        return engine.handle(command)

    return await answer(api, request, work)
