"""Zero-shot on vLLM: the title trie in the vLLM engine (only catalog items), and the endpoint
backend against a real OpenAI-compatible server — vLLM's own ``api_server`` serving a tiny local
model on the loopback interface, called through the backend's own HTTP client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from llmrec.zeroshot.build import build_zeroshot
from llmrec.zeroshot.config import EndpointSection, GroundingSection, ZeroShotSection
from llmrec.zeroshot.endpoint import ChatPrompt, EndpointClient

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TITLES = [
    "Heat",
    "Heat Wave",
    "Heat Wave II",
    "Toy Story",
    "Toy Story",
    "Ça ira 你好",
    "<|im_end|>",
    "The Remarkably Long Shared Beginning of Many Titles, Part One",
    "The Remarkably Long Shared Beginning of Many Titles, Part Two",
]
ITEMS = pd.DataFrame(
    {
        "item_id": [f"i{n}" for n in range(len(TITLES))],
        "title": TITLES,
        "year": ["1995", "1996", "1997", "1995", "1999", "2001", "", "2002", "2002"],
    }
)


@pytest.fixture(scope="module")
def short_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Terse prompts: the shared engine takes 256 tokens, this tokenizer has 300."""
    folder = tmp_path_factory.mktemp("prompts")
    (folder / "full.yaml").write_text(
        "name: full\nmode: full\n"
        "prompt: 'watched {% for i in history %}{{ i.name }}; {% endfor %}next'\n"
    )
    (folder / "ranked.yaml").write_text(
        "name: ranked\nmode: candidates\n"
        "prompt: 'watched {% for i in history %}{{ i.name }}; {% endfor %}next of "
        "{{ candidates | length }}'\n"
    )
    return folder


@pytest.mark.parametrize("seed", range(4))
def test_vllm_zero_shot_names_only_catalog_items(
    llm: Any, tiny_dir: tuple[Path, Any], short_prompts: Path, seed: int
) -> None:
    tokenizer = tiny_dir[1]
    section = ZeroShotSection(
        backend="vllm",
        prompts_dir=str(short_prompts),
        prompt="full",
        candidates_prompt="ranked",
        max_history=2,
        num_beams=4,
        candidate_limit=4,
    )
    rec = build_zeroshot(ITEMS, section, model=llm, tokenizer=tokenizer)
    rng = np.random.default_rng(seed)
    ids = ITEMS["item_id"].tolist()
    histories = [list(rng.choice(ids, size=2)) for _ in range(3)]
    exclude = [{i for i in ids if rng.random() < 0.6} for _ in histories]
    k = int(rng.integers(1, 6))
    items, _ = rec.recommend(histories, k, exclude)
    for row, banned in zip(items, exclude, strict=True):
        named = [i for i in row if i]
        assert set(named) <= set(ids) - banned
        assert len(named) == len(set(named)) == min(k, len(ids) - len(banned))
    assert rec.stats.validity == 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chatty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with its random init left as it is: sampling from it writes words (the
    shared fixture's sharpened model writes newlines only)."""
    from llmrec.tokens import build_tiny_model, save_tiny, train_tokenizer
    from tests.tiny_corpus import WORDS

    rng = np.random.default_rng(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(WORDS, size=12)) for _ in range(300)], 300)
    model = build_tiny_model(tokenizer, hidden_size=64, num_heads=2, num_layers=2, seed=3)
    return save_tiny(model, tokenizer, tmp_path_factory.mktemp("chatty") / "model")


@pytest.fixture(scope="module")
def api_server(chatty_dir: Path) -> Iterator[str]:
    """``python -m vllm.entrypoints.openai.api_server`` on a tiny model, with an API key."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(chatty_dir),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--api-key",
        "test-key",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    # Its own process group, so the engine processes it spawns go down with it.
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    import httpx

    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                raise RuntimeError(f"api_server exited with {server.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("api_server did not come up in 600 s")
            time.sleep(2)
        yield f"{base}/v1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# A random tiny model greedily writes newlines only; seeded sampling writes words. The shared
# machine can be slow: a generous timeout.
SAMPLED = {"temperature": 1.0, "seed": 0, "max_tokens": 40, "timeout_s": 300.0}


def test_endpoint_answers_are_grounded(api_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", api_server)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    section = ZeroShotSection(
        backend="openai",
        model="tiny",
        endpoint=EndpointSection(**SAMPLED),  # type: ignore[arg-type]
        grounding=GroundingSection(embedding=False),
    )
    history = ["i0", "i3"]
    probe = build_zeroshot(ITEMS, section)
    probe.recommend([history], 3)
    _, answers = probe.last[0]
    lines = [a.line for a in answers]
    assert lines, "the server answered nothing"
    # The same prompt again (the full-catalog prompt does not list the catalog), over a catalog
    # holding each answer line garbled: an inner typo and a year. Each must come back grounded.
    garbled = [_typo(line) + " (2020)" for line in lines]
    more = pd.DataFrame(
        {
            "item_id": [f"g{n}" for n in range(len(lines))],
            "title": [_typo(line) for line in lines],
            "year": ["2020"] * len(lines),
        }
    )
    rec = build_zeroshot(pd.concat([ITEMS, more], ignore_index=True), section)
    items, _ = rec.recommend([history], len(lines) + 2)
    _, again = rec.last[0]
    assert [a.line for a in again] == lines  # seeded sampling: the same answer
    for answer, expected in zip(again, more["item_id"], strict=True):
        assert answer.item == expected, (answer, garbled)
        assert answer.method in ("exact", "exact-noyear", "fuzzy")
    used = [i for i in items[0] if i]
    assert used == list(dict.fromkeys(more["item_id"]))[: len(used)]
    assert rec.stats.validity == 1.0


def test_endpoint_client_talks_to_the_server(api_server: str) -> None:
    client = EndpointClient(api_server, "tiny", "test-key", EndpointSection(**SAMPLED))  # type: ignore[arg-type]
    chat = client.complete(ChatPrompt("You recommend movies.", "the user watched a movie"))
    assert isinstance(chat, str) and chat
    plain = EndpointClient(
        api_server,
        "tiny",
        "test-key",
        EndpointSection(api="completions", **SAMPLED),  # type: ignore[arg-type]
    )
    assert isinstance(plain.complete(ChatPrompt(None, "the user watched")), str)
    many = client.complete_many([ChatPrompt(None, "the user watched")] * 3)
    assert len(many) == 3 and len(set(many)) == 1  # one seed, one answer
    from llmrec.errors import UserError

    wrong = EndpointClient(api_server, "tiny", "wrong-key", EndpointSection(max_retries=0))
    with pytest.raises(UserError, match="401"):
        wrong.complete(ChatPrompt(None, "x"))


def _typo(line: str) -> str:
    """The line with two neighbouring letters of its longest word swapped."""
    words = line.split(" ")
    n = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[n]
    if len(word) >= 4:
        words[n] = word[0] + word[2] + word[1] + word[3:]
    return " ".join(words)
