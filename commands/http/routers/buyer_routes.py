"""Reading a buyer's standing (flagging and clearing are actions: action_routes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import (
    AS_OF_QUERY,
    MERCHANT_ID,
    BuyerView,
    responses,
)
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ShowBuyer

router = APIRouter()


@router.get(
    "/v1/buyers/{buyer_id}",
    tags=["buyers"],
    summary=ShowBuyer.__doc__,
    response_model=None,
    responses=responses(BuyerView, 404, 422),
    openapi_extra={
        "parameters": [
            {"name": "buyer_id", "in": "path", "required": True, "schema": MERCHANT_ID},
            AS_OF_QUERY,
        ]
    },
)
async def show_buyer(request: Request, buyer_id: str, api: ApiDep, at: str | None = None) -> Any:
    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, ShowBuyer.name)
        command = ShowBuyer.parse({"buyer_id": buyer_id, "at": at})
        refuse_unseen(principal, ("", command.buyer_id), f"buyer {buyer_id}")
        return engine.handle(command)

    return await answer(api, request, work)
