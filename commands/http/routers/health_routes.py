"""Whether the service is up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.openapi_models import Health

router = APIRouter()


@router.get(
    "/healthz",
    tags=["service"],
    response_model=None,
    responses={200: {"model": Health, "description": "The service is up."}},
    openapi_extra={"security": []},  # no key needed
)
async def healthz(api: ApiDep) -> Any:
    """Whether the service is up (no key needed)."""
    return {"ok": True, "store": api.engine.store.url.kind if api.engine else None}
