"""The ``Recommender`` protocol every model and baseline implements, and the knobs they share.

``recommend(histories, k, exclude, users)`` takes each user's history (item ids, oldest first)
and returns, per user, ``k`` distinct item ids best first with their scores. ``users`` says who
each history belongs to (a user id, or None for an anonymous history): most models ignore it,
a router of per-user adapters uses it. Evaluation (``eval.evaluate``) and the HTTP server only
ever talk to this protocol, so an LLM, Pop, SASRec and a zero-shot prompt are compared and
served by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

# The one default beam width of constrained beam search (library, validation, eval, serving).
DEFAULT_BEAMS = 20

Users = Sequence[str | None]


@runtime_checkable
class Recommender(Protocol):
    """Top-k recommendation from histories."""

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Per user: ``k`` item ids (best first) and their scores [n_users, k].

        Items in ``exclude[u]`` are never returned for user ``u``; ``users[u]`` names the user
        (None: unknown). A recommender that cannot fill ``k`` slots pads with ``""`` and a
        score of ``-inf``.
        """
        ...


def beam_width(num_beams: int | None, k: int, n_items: int) -> int:
    """The width a top-``k`` beam search runs with: ``num_beams`` (default ``DEFAULT_BEAMS``)
    raised to ``k``, never wider than the catalog."""
    return max(1, min(max(num_beams or DEFAULT_BEAMS, k), n_items))


def pad_rows(
    items: list[list[str]], scores: list[list[float]], k: int
) -> tuple[list[list[str]], np.ndarray]:
    """Cut or pad per-user lists to exactly ``k`` entries."""
    out_items = [(row + [""] * k)[:k] for row in items]
    out_scores = np.full((len(items), k), -np.inf, dtype=np.float64)
    for u, row in enumerate(scores):
        out_scores[u, : min(k, len(row))] = row[:k]
    return out_items, out_scores
