"""`GET /v1/models`: what a request's `model` may name."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from martlet_molt.gateway.routes.deps import (
    OPENAI_ERRORS,
    CurrentSettings,
    Principal,
    Runs,
    served_models,
)

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS, tags=["openai"])


@router.get("/models")
async def list_models(runs: Runs, settings: CurrentSettings, principal: Principal) -> JSONResponse:
    """The served models: the provider's own, then `MARTLET_MODEL_ALIASES`' names."""
    del principal  # listed to every principal alike, but only to one with a valid key
    return JSONResponse(served_models(runs, settings).listing(runs.started_at))
