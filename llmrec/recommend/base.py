"""The ``Recommender`` protocol every model and baseline implements.

``recommend(histories, k, exclude)`` takes each user's history (item ids, oldest first) and
returns, per user, ``k`` distinct item ids best first with their scores. Evaluation
(``eval.evaluate``) only ever talks to this protocol, so an LLM, Pop, SASRec and a zero-shot
prompt are compared by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Recommender(Protocol):
    """Top-k recommendation from histories."""

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Per user: ``k`` item ids (best first) and their scores [n_users, k].

        Items in ``exclude[u]`` are never returned for user ``u``. A recommender that cannot
        fill ``k`` slots pads with ``""`` and a score of ``-inf``.
        """
        ...


def pad_rows(
    items: list[list[str]], scores: list[list[float]], k: int
) -> tuple[list[list[str]], np.ndarray]:
    """Cut or pad per-user lists to exactly ``k`` entries."""
    out_items = [(row + [""] * k)[:k] for row in items]
    out_scores = np.full((len(items), k), -np.inf, dtype=np.float64)
    for u, row in enumerate(scores):
        out_scores[u, : min(k, len(row))] = row[:k]
    return out_items, out_scores
