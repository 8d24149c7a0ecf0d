"""Multi-LoRA on one engine: two adapters served side by side change the ranking differently,
each as HF + PEFT ranks it; adapters that train token rows are refused with a message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from llmrec.errors import UserError
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.vllm import VLLMRecommender
from llmrec.serve.server import check_adapter
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_two_adapters_side_by_side(
    llm: Any, tiny_dir: tuple[Path, Any], adapters: dict[str, Path]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from vllm.lora.request import LoRARequest

    tokenizer = tiny_dir[1]
    catalog = random_catalog(7, n=40)
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    prompts = TextPrompts(tokenizer, catalog)
    histories = [list(catalog.item_ids[:3]), [catalog.item_ids[9]], []]
    ranked = {}
    for n, name in enumerate([None, "alice", "bob"]):
        lora = LoRARequest(name, n, str(adapters[name])) if name else None
        rec = VLLMRecommender(llm, prompts, trie, lora_request=lora)  # type: ignore[arg-type]
        ranked[name] = rec.score_beam(histories, 10)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapters[name]) if name else base
        want = HFRecommender(model.eval(), prompts, trie).score_beam(histories, 10)  # type: ignore[arg-type]
        for got_row, want_row in zip(ranked[name], want, strict=True):
            assert [i for i, _ in got_row] == [i for i, _ in want_row]
            np.testing.assert_allclose(
                [s for _, s in got_row], [s for _, s in want_row], rtol=1e-4, atol=2e-3
            )
    assert ranked["alice"] != ranked["bob"]
    assert ranked["alice"] != ranked[None] and ranked["bob"] != ranked[None]


def test_adapters_with_token_rows_are_refused(adapters: dict[str, Path], tmp_path: Path) -> None:
    check_adapter(adapters["alice"])
    bad = tmp_path / "rows"
    bad.mkdir()
    config = json.loads((adapters["alice"] / "adapter_config.json").read_text())
    config["trainable_token_indices"] = {"embed_tokens": [1, 2]}
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="llmrec export"):
        check_adapter(bad)
