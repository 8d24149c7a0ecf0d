"""Per-user routing on vLLM: one batch mixing users of different adapters (and new users)
ranks each user exactly as their adapter loaded by hand as a ``LoRARequest`` does, and as HF +
PEFT does; unknown users get the shared model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.adapters import AdapterSpec, Router, export_slices
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.routing import RoutingRecommender, VLLMBank
from llmrec.recommend.vllm import VLLMRecommender
from tests.vllm_fixtures import TextPrompts, random_catalog

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


@pytest.fixture(scope="module")
def router(tiny_dir: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Router:
    """A stage folder with a random sliced LoRA (2 slices of rank 4) and three adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("per_user")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32)
    torch.manual_seed(5)
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules=TARGETS)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(20.0)  # strong enough to move the ranking
    model.save_pretrained(folder / "model")
    adapters = {
        "cluster-0": AdapterSpec({0: 1.0}),
        "cluster-1": AdapterSpec({1: 1.0}),
        "user-7": AdapterSpec({0: 0.3, 1: 0.7}),  # a gated mixture: rank 8
    }
    users = {"a": "cluster-0", "b": "cluster-1", "c": "user-7", "d": "cluster-0"}
    return Router(folder, "test-routing", "mixture", 2, 4, 8.0, adapters, users)


def test_routed_batch_equals_each_adapter_by_hand(
    llm: Any, tiny_dir: tuple[Path, Any], router: Router, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from vllm.lora.request import LoRARequest

    tokenizer = tiny_dir[1]
    catalog = random_catalog(3, n=40)
    trie = ItemTrie.from_sid_map(catalog, tokenizer, tokenizer.eos_token_id)
    prompts = TextPrompts(tokenizer, catalog)
    base = VLLMRecommender(llm, prompts, trie, num_beams=10)  # type: ignore[arg-type]
    # Ids far from the other vLLM tests' adapters on this shared engine.
    routed = RoutingRecommender(router, VLLMBank(router, base, first_id=100))
    ids = list(catalog.item_ids)
    history = ids[:3]
    users = ["a", "b", "c", "d", "new", None]
    histories = [history, history, history, ids[5:7], history, history]
    got, got_scores = routed.recommend(histories, 5, None, users)
    assert got[0] != got[1] and got[0] != got[2]  # one history, three adapters
    for row, user in enumerate(users):
        name = router.route(user)
        if name is None:
            rec = base
            model = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32)
        else:
            # The same adapter, cut by hand into another folder and loaded as-is.
            folder = export_slices(
                router.folder / "model", tmp_path / name, 4, 8.0, router.adapters[name]
            )
            lora = LoRARequest(f"hand-{name}", 200 + router.index[name], str(folder))
            rec = VLLMRecommender(llm, prompts, trie, num_beams=10, lora_request=lora)  # type: ignore[arg-type]
            base_model = AutoModelForCausalLM.from_pretrained(tiny_dir[0], dtype=torch.float32)
            model = PeftModel.from_pretrained(base_model, folder)
        want, want_scores = rec.recommend([histories[row]], 5)
        assert got[row] == want[0], user
        np.testing.assert_allclose(got_scores[row], want_scores[0], rtol=1e-4, atol=2e-3)
        hf = HFRecommender(model.eval(), prompts, trie, num_beams=10)  # type: ignore[arg-type]
        hf_items, _ = hf.recommend([histories[row]], 5)
        assert got[row] == hf_items[0], user
    assert routed.pinned("cluster-1").recommend([history], 5, None, ["a"])[0] == [got[1]]
