"""Whether the service is up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from aftersales.commands.http.dependencies import ApiDep

router = APIRouter()


@router.get("/healthz", tags=["service"])
async def healthz(api: ApiDep) -> Any:
    """Whether the service is up (no key needed)."""
    return {"ok": True, "store": api.engine.store.url.kind if api.engine else None}
