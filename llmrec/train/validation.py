"""Validation during training: constrained top-K on a fixed sample of validation users.

Built once per run (sampled cases, prompts, trie per tokenizer) and called with the model being
trained, so any trainer can log Recall/NDCG@K next to its loss. It ranks through
``HFRecommender`` — the decoding path of evaluation and serving — and scores with the pure
metrics of ``eval.metrics``; the sample is the one ``eval.protocol`` would draw with the same
seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.data.prepare import PreparedData
from llmrec.eval.metrics import hit_at, invalid_share, ndcg_at, ranks_from_lists
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.prompting import RunDecoding
from llmrec.run import RunLayout
from llmrec.train.config import ValidationSection

EvalFn = Callable[[Any, Any], dict[str, float]]


def make_validation_fn(
    run: str | Path | RunLayout, cfg: ValidationSection, seed: int = 0
) -> EvalFn:
    """A function ``(model, tokenizer) -> {"recall@k": ..., "ndcg@k": ..., "invalid@k": ...}``."""
    layout = RunLayout.of(run)
    cases = PreparedData.load(layout.root).split.cases("valid")
    if cfg.users < len(cases):
        keep = np.sort(np.random.default_rng(seed).choice(len(cases), cfg.users, replace=False))
        cases = cases.iloc[keep].reset_index(drop=True)
    histories = [list(h) for h in cases["history"]]
    users = cases["user_id"].astype(str).tolist()
    targets = cases["target"].astype(str).tolist()
    decodings: dict[int, RunDecoding] = {}

    def validate(model: Any, tokenizer: Any) -> dict[str, float]:
        if id(tokenizer) not in decodings:
            decodings[id(tokenizer)] = RunDecoding.load(layout, tokenizer)
        decoding = decodings[id(tokenizer)]
        was_training = model.training
        model.eval()
        try:
            rec = HFRecommender(
                model,
                decoding.prompts,
                decoding.trie,
                mode=cfg.mode,
                num_beams=cfg.num_beams,
                batch_size=cfg.batch_size,
            )
            items, _ = rec.recommend(histories, cfg.k, None, users)
        finally:
            model.train(was_training)
        ranks = ranks_from_lists(items, targets)
        invalid = invalid_share(items, cfg.k, set(decoding.trie.item_ids))
        return {
            f"recall@{cfg.k}": float(hit_at(ranks, cfg.k).mean()),
            f"ndcg@{cfg.k}": float(ndcg_at(ranks, cfg.k).mean()),
            f"invalid@{cfg.k}": float(invalid),
        }

    return validate
