"""The HTTP API: ``POST /v1/recommend``, ``GET /health``, OpenAPI at ``/openapi.json``.

Every request is checked before it reaches the model (unknown user, unknown items, ``k`` out of
range, oversize history, unknown adapter) and refused with a 4xx and a message; the backend is
built inside the app's lifespan, so an ``AsyncLLM`` lives on the server's own event loop.
Requires ``fastapi`` (``pip install 'llmrec[serve]'``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llmrec.serve.backends import Backend, RequestError, ServingCatalog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What a request may ask for."""

    max_k: int = 100
    max_history: int = 500
    max_beams: int = 64


class RecommendRequest(BaseModel):
    """A user id (history from the run's data) or an explicit history, oldest item first."""

    user_id: str | None = Field(None, description="a user of the run's data")
    history: list[str] | None = Field(None, description="item ids, oldest first")
    k: int = Field(10, description="how many items to return")
    exclude_seen: bool = Field(True, description="never return an item of the history")
    adapter: str | None = Field(None, description="LoRA adapter to score with (vLLM backend)")
    num_beams: int | None = Field(
        None, description="beam width (default: the server's; raised to k; 1 with k=1: greedy)"
    )


class Item(BaseModel):
    """One recommended item."""

    rank: int
    item_id: str
    title: str | None
    score: float = Field(description="log-probability of the item's tokens under the model")


class RecommendResponse(BaseModel):
    """Items best first."""

    items: list[Item]
    k: int
    user_id: str | None
    history_length: int
    adapter: str | None
    backend: str
    latency_ms: float


def resolve(
    req: RecommendRequest, catalog: ServingCatalog, limits: Limits, adapters: Any
) -> tuple[list[str], set[str]]:
    """The history to score and the items to exclude, or a ``RequestError`` saying why not."""
    if (req.user_id is None) == (req.history is None):
        raise RequestError(422, "give exactly one of user_id or history")
    if not 1 <= req.k <= min(limits.max_k, len(catalog.item_ids)):
        raise RequestError(
            422, f"k must be between 1 and {min(limits.max_k, len(catalog.item_ids))}, got {req.k}"
        )
    if req.num_beams is not None and not 1 <= req.num_beams <= limits.max_beams:
        raise RequestError(
            422, f"num_beams must be between 1 and {limits.max_beams}, got {req.num_beams}"
        )
    if req.adapter is not None and req.adapter not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise RequestError(404, f"unknown adapter {req.adapter!r} (served: {known})")
    if req.user_id is not None:
        if req.user_id not in catalog.histories:
            raise RequestError(404, f"unknown user {req.user_id!r}")
        history = list(catalog.histories[req.user_id])
    else:
        history = list(req.history or [])
        if len(history) > limits.max_history:
            raise RequestError(
                413, f"history has {len(history)} items; at most {limits.max_history} are accepted"
            )
        unknown = [i for i in history if i not in catalog.item_set]
        if unknown:
            raise RequestError(422, f"unknown item ids: {unknown[:10]}")
    exclude = set(history) if req.exclude_seen else set()
    if len(catalog.item_ids) - len(exclude) < req.k:
        raise RequestError(
            422,
            f"only {len(catalog.item_ids) - len(exclude)} items remain "
            f"after excluding the history; ask for fewer than k={req.k}",
        )
    return history, exclude


def create_app(
    make_backend: Callable[[], Backend], catalog: ServingCatalog, limits: Limits | None = None
) -> FastAPI:
    """The FastAPI app; ``make_backend`` runs at start-up, on the server's event loop."""
    limits = limits or Limits()
    state: dict[str, Backend] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["backend"] = make_backend()
        logger.info(
            "serving %d items with the %s backend", len(catalog.item_ids), state["backend"].name
        )
        yield
        await state["backend"].close()

    app = FastAPI(
        title="llmrec",
        version="1",
        lifespan=lifespan,
        description="Generative recommendation: items named by constrained decoding.",
    )

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={"detail": err.message})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, and what is served."""
        backend = state.get("backend")
        return {
            "status": "ok" if backend else "starting",
            "items": len(catalog.item_ids),
            "users": len(catalog.histories),
            "backend": backend.name if backend else None,
            "adapters": sorted(backend.adapters) if backend else [],
        }

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses={
            404: {"description": "unknown user or adapter"},
            413: {"description": "history too long"},
            422: {"description": "invalid request (unknown items, k out of range)"},
        },
    )
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        """Top-k catalog items for a user or a history, best first, with scores."""
        backend = state["backend"]
        history, exclude = resolve(req, catalog, limits, backend.adapters)
        start = time.perf_counter()
        try:
            ranked = await backend.recommend(history, req.k, exclude, req.adapter, req.num_beams)
        except RequestError:
            raise
        except Exception as err:  # the engine failed, not the request: say so, as a 503
            logger.exception("backend failure")
            raise RequestError(503, f"the {backend.name} backend failed: {err!r}") from err
        items = [
            Item(rank=r, item_id=i, title=catalog.titles.get(i), score=s)
            for r, (i, s) in enumerate(ranked, start=1)
        ]
        return RecommendResponse(
            items=items,
            k=req.k,
            user_id=req.user_id,
            history_length=len(history),
            adapter=req.adapter,
            backend=backend.name,
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    return app
