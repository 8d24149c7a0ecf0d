"""The HTTP API on the HF backend (main environment): valid requests get catalog items with
titles and scores, also concurrently and in micro-batches; limits come from the server and the
engine; malformed requests get a 4xx with a message, never a 500; one failing request in a
batch never fails the others."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.base import Users
from llmrec.recommend.hf import HFRecommender
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@dataclass
class Flaky:
    """A recommender that fails for histories containing ``poison``, else defers to ``inner``."""

    inner: Any
    poison: str
    calls: int = 0

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        self.calls += 1
        if any(self.poison in h for h in histories):
            raise RuntimeError("the engine choked")
        return self.inner.recommend(histories, k, exclude, users)


@pytest.fixture(scope="module")
def served(tiny_dir: tuple[Path, Any]) -> Iterator[Any]:
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM

    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import DEFAULT, RecommenderBackend, ServingCatalog

    tokenizer = tiny_dir[1]
    sid_map = random_catalog(11, n=30)
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    items = trie.item_ids
    catalog = ServingCatalog(
        items, {i: f"Title of {i}" for i in items}, {"u1": tuple(items[:4]), "u2": (items[5],)}
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32).eval()
    prompts = TextPrompts(tokenizer, sid_map)
    rec = HFRecommender(model, prompts, trie, num_beams=10)  # type: ignore[arg-type]
    flaky = Flaky(rec, poison=items[29])

    def make_backend() -> RecommenderBackend:
        # An engine that serves beams up to 16 wide: k and num_beams above that get a 422.
        return RecommenderBackend({DEFAULT: flaky}, "hf", max_width=16, max_wait_ms=50)

    app = create_app(make_backend, catalog, Limits(max_k=20, max_request_history=8))
    with TestClient(app) as client:
        yield client, items, rec, flaky


def _ids(response: Any) -> list[str]:
    return [r["item_id"] for r in response.json()["items"]]


def test_health_and_openapi(served: Any) -> None:
    client = served[0]
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "items": 30,
        "users": 2,
        "backend": "hf",
        "adapters": [],
        "max_k": 16,
    }
    schema = client.get("/openapi.json").json()
    assert "/v1/recommend" in schema["paths"]


def test_answers_are_the_recommenders_own(served: Any) -> None:
    client, items, rec, _ = served
    by_user = client.post("/v1/recommend", json={"user_id": "u1", "k": 5}).json()
    assert [r["rank"] for r in by_user["items"]] == [1, 2, 3, 4, 5]
    want = rec.score_beam([list(items[:4])], 10, [set(items[:4])])[0][:5]
    got = [(r["item_id"], r["score"]) for r in by_user["items"]]
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert all(r["title"] == f"Title of {r['item_id']}" for r in by_user["items"])
    same = client.post("/v1/recommend", json={"history": list(items[:4]), "k": 5})
    assert _ids(same) == [i for i, _ in want]
    cold = client.post("/v1/recommend", json={"history": [], "k": 3})
    assert cold.status_code == 200 and len(cold.json()["items"]) == 3


def test_concurrent_requests_are_batched_and_answered_as_alone(served: Any) -> None:
    client, items, _, flaky = served
    bodies = [{"history": [items[i % 25], items[(i * 7) % 25]], "k": 5} for i in range(24)]
    before = flaky.calls
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda b: client.post("/v1/recommend", json=b), bodies))
    assert all(r.status_code == 200 for r in responses)
    assert flaky.calls - before < len(bodies)  # requests shared model calls
    for body, response in zip(bodies[:4], responses, strict=False):
        assert _ids(client.post("/v1/recommend", json=body)) == _ids(response)


def test_one_failing_request_does_not_fail_its_batch(served: Any) -> None:
    client, items, _, _ = served
    bodies = [{"history": [items[i]], "k": 3} for i in range(10)] + [
        {"history": [items[29]], "k": 3}  # the poisoned one
    ]
    with ThreadPoolExecutor(11) as pool:
        responses = list(pool.map(lambda b: client.post("/v1/recommend", json=b), bodies))
    assert [r.status_code for r in responses] == [200] * 10 + [503]
    assert "choked" in responses[-1].json()["detail"]
    assert client.post("/v1/recommend", json=bodies[0]).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 422, "exactly one of user_id or history"),
        ({"user_id": "u1", "history": []}, 422, "exactly one"),
        ({"user_id": "nobody"}, 404, "unknown user"),
        ({"user_id": "x" * 10000}, 404, "…"),  # echoed cut short
        ({"history": ["not-an-item"]}, 422, "unknown item ids"),
        ({"history": [], "k": 0}, 422, "k must be between 1 and 16 (the server's limit)"),
        ({"history": [], "k": 17}, 422, "k must be between 1 and 16"),
        ({"history": [], "k": -3}, 422, "k must be between"),
        ({"history": [], "k": "ten"}, 422, "k"),
        ({"history": [], "k": 1.5}, 422, "k"),
        ({"history": "abc"}, 422, "history"),
        ({"history": [1, 2]}, 422, "history"),
        ({"history": ["x"] * 9}, 413, "at most 8"),
        ({"history": [], "adapter": "carol"}, 404, "unknown adapter"),
        ({"history": [], "num_beams": 0}, 422, "num_beams must be between 1 and 16"),
        ({"history": [], "num_beams": 17}, 422, "num_beams"),
        ({"user_id": "u2", "k": 16, "exclude_seen": True}, 200, ""),
        ({"history": [], "user_id": None}, 200, ""),
        ({"history": [], "k": 1, "num_beams": 1}, 200, ""),
    ],
)
def test_malformed_requests_get_4xx(
    served: Any, body: dict[str, Any], status: int, needle: str
) -> None:
    response = served[0].post("/v1/recommend", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert len(response.text) < 2000


def test_bodies_that_are_not_json_or_too_large(served: Any) -> None:
    client = served[0]
    response = client.post(
        "/v1/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    huge = b'{"history": [], "user_id": "' + b"x" * 70_000 + b'"}'
    response = client.post(
        "/v1/recommend", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "bytes" in response.text
    assert client.get("/v1/recommend").status_code == 405
