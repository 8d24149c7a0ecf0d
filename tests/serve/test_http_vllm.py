"""The HTTP API on the vLLM backend: the same app over ``VLLMRecommender`` on a real engine —
answers equal HF's constrained beam search, adapters change them, concurrent requests equal
requests alone, and a k above the engine's limit (its ``max_logprobs``) is a 422 naming it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("vllm")
pytest.importorskip("fastapi")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(llm: Any, tiny_dir: tuple[Path, Any], adapters: dict[str, Path]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from llmrec.recommend.vllm import VLLMRecommender
    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import DEFAULT, RecommenderBackend, ServingCatalog
    from llmrec.serve.server import lora_requests

    tokenizer = tiny_dir[1]
    sid_map = random_catalog(11, n=100)
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    items = trie.item_ids
    catalog = ServingCatalog(items, {i: f"Title of {i}" for i in items}, {"u1": tuple(items[:4])})
    prompts = TextPrompts(tokenizer, sid_map)
    base = VLLMRecommender(llm, prompts, trie, num_beams=10)  # type: ignore[arg-type]
    models: dict[str, Any] = {DEFAULT: base}
    for name, request in lora_requests({k: str(v) for k, v in adapters.items()}).items():
        models[name] = replace(base, lora_request=request)

    def make_backend() -> RecommenderBackend:
        return RecommenderBackend(models, "vllm", base.max_width, max_wait_ms=20)

    # The server's own limits above the engine's, so that the engine's max_logprobs binds.
    app = create_app(
        make_backend, catalog, Limits(max_k=1000, max_request_history=8, max_beams=1000)
    )
    with TestClient(app) as client:
        yield client, items, prompts, trie


def _ids(response: Any) -> list[str]:
    return [r["item_id"] for r in response.json()["items"]]


def test_answers_equal_hf_beam_search(served: Any, tiny_dir: tuple[Path, Any]) -> None:
    from transformers import AutoModelForCausalLM

    from llmrec.recommend.hf import HFRecommender

    client, items, prompts, trie = served
    model = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32).eval()
    hf = HFRecommender(model, prompts, trie, num_beams=10)
    for history in ([items[1], items[2]], [items[7]], []):
        got = client.post("/v1/recommend", json={"history": history, "k": 5}).json()["items"]
        want = hf.score_beam([history], 10, [set(history)])[0][:5]
        assert [r["item_id"] for r in got] == [i for i, _ in want]
        np.testing.assert_allclose([r["score"] for r in got], [s for _, s in want], atol=2e-3)
    assert client.get("/health").json()["max_k"] == 128  # the engine's max_logprobs


def test_adapters_change_the_answer(served: Any) -> None:
    client, items = served[0], served[1]
    body = {"history": list(items[:2]), "k": 10}
    answers = {
        tuple(_ids(client.post("/v1/recommend", json={**body, **extra})))
        for extra in ({}, {"adapter": "alice"}, {"adapter": "bob"})
    }
    assert len(answers) == 3


def test_concurrent_requests_equal_requests_alone(served: Any) -> None:
    client, items = served[0], served[1]
    bodies = [{"history": [items[i % 90], items[(i * 7) % 90]], "k": 5} for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: client.post("/v1/recommend", json=b), bodies))
    assert all(r.status_code == 200 for r in responses)
    assert all(set(_ids(r)) <= set(items) for r in responses)
    assert _ids(client.post("/v1/recommend", json=bodies[3])) == _ids(responses[3])


def test_greedy_is_a_beam_of_one(served: Any, tiny_dir: tuple[Path, Any]) -> None:
    from transformers import AutoModelForCausalLM

    from llmrec.recommend.hf import HFRecommender

    client, items, prompts, trie = served
    model = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32).eval()
    hf = HFRecommender(model, prompts, trie)
    for h in ([items[1], items[2]], [items[7]], []):
        got = client.post("/v1/recommend", json={"history": h, "k": 1, "num_beams": 1}).json()
        want = hf.score_beam([h], 1, [set(h)])[0]
        assert [r["item_id"] for r in got["items"]] == [i for i, _ in want]
        np.testing.assert_allclose(
            [r["score"] for r in got["items"]], [s for _, s in want], atol=2e-3
        )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        # k is bounded by the engine (128) and by the catalog (100 items here): the smaller
        ({"history": [], "k": 101}, "k must be between 1 and 100 (the server's limit)"),
        ({"history": [], "num_beams": 129}, "num_beams must be between 1 and 128"),
    ],
)
def test_over_the_engine_limit_is_a_422(served: Any, body: dict[str, Any], needle: str) -> None:
    response = served[0].post("/v1/recommend", json=body)
    assert response.status_code == 422 and needle in response.text
