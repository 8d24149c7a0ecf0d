"""One user's recommendations, readable: what ``llmrec recommend`` prints.

A known user's history follows one rule everywhere (``Split.histories``): ``all`` of their
interactions by default — what the server uses — or ``test``, the interactions before their
held-out test item, which is what evaluation scores (and then the held-out item can be found
in the list). Seen items are excluded, as the server does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmrec.data.prepare import PreparedData
from llmrec.data.split import HistoryRule
from llmrec.errors import UserError
from llmrec.recommend.base import Recommender


@dataclass(frozen=True)
class UserRecommendations:
    """A user's (or a history's) top-k with titles, and what we know about them."""

    user_id: str | None
    rule: HistoryRule | None  # None: an explicit history
    history: list[str]
    held_out: str | None
    items: list[tuple[str, float]]
    titles: dict[str, str]

    def title(self, item: str) -> str:
        """The item's title, or its id."""
        return self.titles.get(item, item)

    def format(self, last: int = 3) -> str:
        """Readable lines: who, last watched, the ranked items, the held-out item."""
        who = f"user {self.user_id}" if self.user_id is not None else "history"
        rule = f" (history rule {self.rule}: {len(self.history)} items)" if self.rule else ""
        seen = "; ".join(self.title(i) for i in self.history[-last:]) or "nothing yet"
        lines = [f"{who}{rule}: last watched {seen}"]
        for rank, (item, score) in enumerate(self.items, start=1):
            mark = "  <- the held-out test item" if item == self.held_out else ""
            lines.append(f"  {rank:>2}. {self.title(item)}  ({score:.2f}){mark}")
        if self.held_out is not None:
            where = "in the history above" if self.held_out in self.history else "not seen"
            lines.append(f"  held-out test item: {self.title(self.held_out)} ({where})")
        return "\n".join(lines)


def recommend_for(
    run: str | Path,
    rec: Recommender,
    user_id: str | None = None,
    history: Sequence[str] | None = None,
    k: int = 10,
    rule: HistoryRule = "all",
    exclude_seen: bool = True,
) -> UserRecommendations:
    """Top-``k`` for a known user (their history under ``rule``) or an explicit history."""
    if (user_id is None) == (history is None):
        raise UserError("give exactly one of a user id or a history")
    prepared = PreparedData.load(run)
    items = prepared.items.astype({"item_id": str})
    titles = {}
    if "title" in items.columns:
        titles = dict(zip(items["item_id"], items["title"].astype(str), strict=True))
    held_out = None
    if user_id is not None:
        known = prepared.split.histories(rule)
        if user_id not in known:
            raise UserError(f"unknown user {user_id!r} (the run has {len(known)})", field="user")
        seen, held_out = known[user_id]
    else:
        seen = [str(i) for i in history or ()]
        unknown = [i for i in seen if i not in titles and titles]
        if unknown:
            raise UserError(f"unknown item ids: {unknown[:5]}", field="history")
    exclude = [set(seen)] if exclude_seen else None
    ranked, scores = rec.recommend([seen], k, exclude, [user_id])
    pairs = [(i, float(s)) for i, s in zip(ranked[0], scores[0], strict=True) if i]
    return UserRecommendations(
        user_id, rule if user_id is not None else None, seen, held_out, pairs, titles
    )
