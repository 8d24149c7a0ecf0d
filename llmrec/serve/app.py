"""The HTTP API: ``POST /v1/recommend``, ``GET /health``, OpenAPI at ``/openapi.json``.

Every request is checked before it reaches the model and refused with a 4xx and a message:
unknown user or adapter (404), a body over ``max_body_bytes`` or a history over
``max_request_history`` items (413), unknown items, ``k`` or ``num_beams`` over the limit the
backend's engine can serve, or a body that is not valid JSON for the schema (422). Values a
client sent are echoed back in messages cut to a few dozen characters. The backend is built
inside the app's lifespan, on the server's own event loop. Requires ``fastapi``
(``pip install 'llmrec[serve]'``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llmrec.serve.backends import RecommenderBackend, RequestError, ServingCatalog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (``k`` and ``num_beams`` also at most the backend's width)."""

    max_k: int = 100
    max_request_history: int = 500
    max_beams: int = 128
    max_body_bytes: int = 64 * 1024


def clip(value: Any, n: int = 40) -> str:
    """A client's value for an error message, cut to ``n`` characters."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


class RecommendRequest(BaseModel):
    """A user id (history from the run's data) or an explicit history, oldest item first."""

    user_id: str | None = Field(None, description="a user of the run's data")
    history: list[str] | None = Field(None, description="item ids, oldest first")
    k: int = Field(10, description="how many items to return")
    exclude_seen: bool = Field(True, description="never return an item of the history")
    adapter: str | None = Field(
        None, description="LoRA adapter to score with (default: the user's, else the base)"
    )
    num_beams: int | None = Field(
        None, description="beam width (default: the server's; raised to k; 1 with k=1: greedy)"
    )
    history_rule: Literal["all", "test", "valid"] | None = Field(
        None,
        description="a known user's interactions to use: all (default), or those before the "
        "held-out test (or validation) item, as evaluation does",
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


def width_limit(limits: Limits, backend: RecommenderBackend) -> int:
    """The widest beam (hence the largest k) a request may ask for."""
    return min(limits.max_beams, backend.max_width or limits.max_beams)


def resolve(
    req: RecommendRequest, catalog: ServingCatalog, limits: Limits, backend: RecommenderBackend
) -> tuple[list[str], set[str], int | None]:
    """The history to score, the items to exclude and the beam width, or a ``RequestError``."""
    if (req.user_id is None) == (req.history is None):
        raise RequestError(422, "give exactly one of user_id or history")
    widest = width_limit(limits, backend)
    max_k = min(limits.max_k, widest, len(catalog.item_ids))
    if not 1 <= req.k <= max_k:
        raise RequestError(
            422, f"k must be between 1 and {max_k} (the server's limit), got {clip(req.k)}"
        )
    if req.num_beams is not None and not 1 <= req.num_beams <= widest:
        raise RequestError(
            422,
            f"num_beams must be between 1 and {widest} (the server's limit), got {req.num_beams}",
        )
    if req.adapter is not None and req.adapter not in backend.adapters:
        served = ", ".join(sorted(backend.adapters)) or "none"
        raise RequestError(404, f"unknown adapter {clip(req.adapter)} (served: {served})")
    if req.user_id is not None:
        known = catalog.history(req.user_id, req.history_rule)
        if known is None:
            raise RequestError(404, f"unknown user {clip(req.user_id)}")
        history = list(known)
    else:
        history = list(req.history or [])
        if len(history) > limits.max_request_history:
            raise RequestError(
                413,
                f"history has {len(history)} items; at most {limits.max_request_history} are "
                "accepted",
            )
        unknown = [i for i in history if i not in catalog.item_set]
        if unknown:
            raise RequestError(422, f"unknown item ids: {clip(unknown[:5], 120)}")
    exclude = set(history) if req.exclude_seen else set()
    remaining = len(catalog.item_ids) - len(exclude & catalog.item_set)
    if remaining < req.k:
        raise RequestError(
            422,
            f"only {remaining} items remain after excluding the history; ask for k ≤ {remaining}",
        )
    return history, exclude, req.num_beams


def create_app(
    make_backend: Callable[[], RecommenderBackend],
    catalog: ServingCatalog,
    limits: Limits | None = None,
) -> FastAPI:
    """The FastAPI app; ``make_backend`` runs at start-up, on the server's event loop."""
    limits = limits or Limits()
    state: dict[str, RecommenderBackend] = {}

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

    @app.middleware("http")
    async def body_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body over {limits.max_body_bytes} bytes"},
            )
        if length is None and request.method == "POST":
            body = await request.body()  # chunked: read it, within the limit
            if len(body) > limits.max_body_bytes:
                return JSONResponse(
                    status_code=413,
                    content={"detail": f"request body over {limits.max_body_bytes} bytes"},
                )
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={"detail": err.message})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # Malformed JSON and schema errors alike: 422, with values cut short.
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            + (f" (got {clip(e['input'])})" if "input" in e else "")
            for e in err.errors()[:5]
        ]
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems)})

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
            "max_k": min(limits.max_k, width_limit(limits, backend)) if backend else None,
        }

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses={
            404: {"description": "unknown user or adapter"},
            413: {"description": "body or history too large"},
            422: {"description": "invalid request (unknown items, k out of range, bad JSON)"},
            503: {"description": "the model backend failed"},
        },
    )
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        """Top-k catalog items for a user or a history, best first, with scores."""
        backend = state["backend"]
        history, exclude, width = resolve(req, catalog, limits, backend)
        start = time.perf_counter()
        try:
            ranked = await backend.recommend(
                history, req.k, exclude, req.adapter, width, req.user_id
            )
        except RequestError:
            raise
        except Exception as err:  # the engine failed, not the request: say so, as a 503
            logger.exception("backend failure")
            raise RequestError(503, f"the {backend.name} backend failed: {clip(err, 200)}") from err
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
