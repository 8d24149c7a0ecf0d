"""The popularity baseline: the most-interacted training items, for everyone."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from llmrec.data.split import Split
from llmrec.eval.metrics import top_k
from llmrec.recommend.base import Users


class PopRecommender:
    """Recommends items by their number of training interactions (ties broken at random)."""

    def __init__(self, split: Split, seed: int = 0) -> None:
        counts: dict[str, int] = {}
        for seq in split.table["train_items"]:
            for item in seq:
                counts[item] = counts.get(item, 0) + 1
        self.items = sorted(counts)
        self.scores = np.array([counts[i] for i in self.items], dtype=np.float64)
        self.index = {item: i for i, item in enumerate(self.items)}
        self.seed = seed

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k popular items per user, minus the excluded ones."""
        scores = np.tile(self.scores, (len(histories), 1))
        if exclude is not None:
            for u, banned in enumerate(exclude):
                cols = [self.index[i] for i in banned if i in self.index]
                scores[u, cols] = -np.inf
        idx, vals = top_k(scores, k, self.seed)
        items = [
            [self.items[i] if np.isfinite(v) else "" for i, v in zip(row, vrow, strict=True)]
            for row, vrow in zip(idx, vals, strict=True)
        ]
        return items, vals
