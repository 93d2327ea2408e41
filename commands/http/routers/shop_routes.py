"""Reading a shop's settings (changing them are actions: action_routes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import MERCHANT_ID, ShopView, responses
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ShowShop

router = APIRouter()


@router.get(
    "/v1/shops/{merchant_id}",
    tags=["shops"],
    summary=ShowShop.__doc__,
    response_model=None,
    responses=responses(ShopView, 404, 422, headers=["ETag"]),
    openapi_extra={
        "parameters": [
            {"name": "merchant_id", "in": "path", "required": True, "schema": MERCHANT_ID}
        ]
    },
)
async def show_shop(request: Request, merchant_id: str, api: ApiDep) -> Any:
    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, ShowShop.name)
        command = ShowShop.parse({"merchant_id": merchant_id})
        refuse_unseen(principal, (command.merchant_id, ""), f"shop {merchant_id}")
        return engine.handle(command)

    return await answer(api, request, work)
