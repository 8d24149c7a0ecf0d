"""The HTTP API on a real AsyncLLM: valid requests get catalog items with titles and scores
(also concurrently, and per adapter); malformed ones get a 4xx with a message, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmrec.constrain.trie import ItemTrie
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("vllm")
pytest.importorskip("fastapi")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(tiny_dir: tuple[Path, Any], adapters: dict[str, Path]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from llmrec.recommend.vllm import EngineConfig, build_async_engine, trie_file
    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import ServingCatalog, VLLMBackend
    from llmrec.serve.server import lora_requests

    tokenizer = tiny_dir[1]
    sid_map = random_catalog(11, n=30)
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    items = trie.item_ids
    catalog = ServingCatalog(
        items, {i: f"Title of {i}" for i in items}, {"u1": tuple(items[:4]), "u2": (items[5],)}
    )

    def make_backend() -> VLLMBackend:
        engine = build_async_engine(
            tiny_dir[0],
            EngineConfig(dtype="float32", max_model_len=256, enable_lora=True, max_lora_rank=8),
        )
        return VLLMBackend(
            engine,
            TextPrompts(tokenizer, sid_map),
            trie,
            str(trie_file(trie)),
            num_beams=10,
            lora=lora_requests({k: str(v) for k, v in adapters.items()}),
        )

    app = create_app(make_backend, catalog, Limits(max_k=20, max_history=8))
    with TestClient(app) as test_client:
        test_client.items = items  # type: ignore[attr-defined]
        test_client.prompts = TextPrompts(tokenizer, sid_map)  # type: ignore[attr-defined]
        test_client.trie = trie  # type: ignore[attr-defined]
        yield test_client


def test_health_and_openapi(client: Any) -> None:
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "items": 30,
        "users": 2,
        "backend": "vllm",
        "adapters": ["alice", "bob"],
    }
    schema = client.get("/openapi.json").json()
    assert (
        "/v1/recommend" in schema["paths"] and "RecommendRequest" in schema["components"]["schemas"]
    )


def test_recommend_by_user_and_by_history(client: Any) -> None:
    items = client.items
    by_user = client.post("/v1/recommend", json={"user_id": "u1", "k": 5}).json()
    assert [r["rank"] for r in by_user["items"]] == [1, 2, 3, 4, 5]
    got = [r["item_id"] for r in by_user["items"]]
    assert set(got) <= set(items) and not set(got) & set(items[:4])  # seen items excluded
    assert all(r["title"] == f"Title of {r['item_id']}" for r in by_user["items"])
    scores = [r["score"] for r in by_user["items"]]
    assert scores == sorted(scores, reverse=True)
    same = client.post("/v1/recommend", json={"history": list(items[:4]), "k": 5}).json()
    assert same["items"] == by_user["items"]
    kept = client.post(
        "/v1/recommend", json={"history": list(items[:4]), "k": 20, "exclude_seen": False}
    ).json()
    assert len(kept["items"]) == 20
    cold = client.post("/v1/recommend", json={"history": [], "k": 3})
    assert cold.status_code == 200 and len(cold.json()["items"]) == 3


def test_adapters_change_the_answer(client: Any) -> None:
    body = {"history": list(client.items[:2]), "k": 10}
    answers = [
        tuple(
            r["item_id"]
            for r in client.post("/v1/recommend", json={**body, **extra}).json()["items"]
        )
        for extra in ({}, {"adapter": "alice"}, {"adapter": "bob"})
    ]
    assert len(set(answers)) == 3


def test_concurrent_requests(client: Any) -> None:
    items = client.items
    bodies = [{"history": [items[i % 30], items[(i * 7) % 30]], "k": 5} for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: client.post("/v1/recommend", json=b), bodies))
    assert all(r.status_code == 200 for r in responses)
    assert all(set(x["item_id"] for x in r.json()["items"]) <= set(items) for r in responses)
    # The same request alone gives the same answer as under load.
    alone = client.post("/v1/recommend", json=bodies[3]).json()["items"]
    assert [x["item_id"] for x in alone] == [x["item_id"] for x in responses[3].json()["items"]]


def test_greedy_is_a_beam_of_one(client: Any, llm: Any, tiny_dir: tuple[Path, Any]) -> None:
    from llmrec.recommend.vllm import VLLMRecommender

    items = client.items
    rec = VLLMRecommender(llm, client.prompts, client.trie)
    for h in ([items[1], items[2]], [items[7]], []):
        got = client.post("/v1/recommend", json={"history": h, "k": 1, "num_beams": 1}).json()
        want = rec.score_beam([h], 1, [set(h)])[0]
        assert [(x["item_id"], pytest.approx(x["score"], abs=1e-3)) for x in got["items"]] == want


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 422, "exactly one of user_id or history"),
        ({"user_id": "u1", "history": []}, 422, "exactly one"),
        ({"user_id": "nobody"}, 404, "unknown user"),
        ({"history": ["not-an-item"]}, 422, "unknown item ids"),
        ({"history": [], "k": 0}, 422, "k must be between 1 and 20"),
        ({"history": [], "k": 21}, 422, "k must be between"),
        ({"history": [], "k": -3}, 422, "k must be between"),
        ({"history": [], "k": "ten"}, 422, "k"),
        ({"history": [], "k": 1.5}, 422, "k"),
        ({"history": "abc"}, 422, "history"),
        ({"history": [1, 2]}, 422, "history"),
        ({"history": ["x"] * 9}, 413, "at most 8"),
        ({"history": [], "adapter": "carol"}, 404, "unknown adapter"),
        ({"history": [], "num_beams": 0}, 422, "num_beams must be between 1 and 64"),
        ({"history": [], "num_beams": 65}, 422, "num_beams"),
        ({"user_id": "u2", "k": 20, "exclude_seen": True}, 200, ""),
        ({"user_id": "u1", "k": 20, "exclude_seen": True}, 200, ""),
        ({"history": [], "user_id": None}, 200, ""),
    ],
)
def test_malformed_requests_get_4xx(
    client: Any, body: dict[str, Any], status: int, needle: str
) -> None:
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_not_json_and_wrong_method(client: Any) -> None:
    response = client.post(
        "/v1/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    response = client.post("/v1/recommend", json={"history": list(client.items[:8]), "k": 20})
    assert response.status_code == 200
    assert client.get("/v1/recommend").status_code == 405
