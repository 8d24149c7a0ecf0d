"""Validation during training: constrained top-K on a fixed sample of validation users.

Built once per run (prompts, trie, sampled cases) and called with the model being trained, so
the SFT loop can log Recall/NDCG@K next to its loss without knowing anything about evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmrec.constrain.trie import ItemTrie
from llmrec.data.prepare import PreparedData
from llmrec.eval.protocol import EvalConfig, evaluate
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.prompting import PromptBuilder


def make_validation_fn(
    run: str | Path,
    *,
    max_users: int = 200,
    k: int = 10,
    mode: str = "beam",
    num_beams: int = 20,
    batch_size: int = 16,
    seed: int = 0,
) -> Callable[[Any, Any], dict[str, float]]:
    """A function ``(model, tokenizer) -> {"val_recall@k": ..., "val_ndcg@k": ...}``."""
    run = Path(run)
    prepared = PreparedData.load(run)
    sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
    config = EvalConfig(ks=[k], part="valid", max_users=max_users, bootstrap=0, seed=seed)
    cache: dict[int, tuple[PromptBuilder, ItemTrie]] = {}

    def validate(model: Any, tokenizer: Any) -> dict[str, float]:
        key = id(tokenizer)
        if key not in cache:
            prompts = PromptBuilder.from_run(run, tokenizer)
            cache[key] = (prompts, ItemTrie.from_sid_map(sid_map, tokenizer, prompts.end_token_id))
        prompts, trie = cache[key]
        was_training = model.training
        model.eval()
        try:
            rec = HFRecommender(
                model,
                prompts,
                trie,
                mode=mode,  # type: ignore[arg-type]
                num_beams=num_beams,
                batch_size=batch_size,
            )
            result = evaluate(rec, prepared.split, config, name="llm")
        finally:
            model.train(was_training)
        return {
            f"val_recall@{k}": result.metrics[f"recall@{k}"],
            f"val_ndcg@{k}": result.metrics[f"ndcg@{k}"],
            f"val_invalid@{k}": result.metrics[f"invalid@{k}"],
        }

    return validate
