"""Make code tuples unique, so that every item gets its own semantic ID.

Methods (``method=``):

* ``"suffix"`` (TIGER, GRID): append one disambiguation level; items sharing a full tuple get
  0, 1, 2, ... in item-index order, all other items get 0. The level is appended only when some
  tuple is shared (``always_suffix=True`` forces it), so all SIDs always have the same length:
  ``levels`` without collisions, ``levels + 1`` otherwise. Its size is the largest group, which
  may exceed the codebook size for adversarial inputs (500 identical embeddings → 500): that still
  works and is reported (``suffix_size``, ``suffix_overflow``).
* ``"reassign"`` (LC-Rec): in each colliding group the item closest to the shared last-level
  codeword keeps it; the others move to the nearest last-level code that no item with the same
  prefix uses. Items never move to a code that is taken, so items without a collision keep their
  codes. Codes are handed out in rounds: every waiting item asks for its nearest free code and the
  closest asker wins; losers ask again. After 16 rounds (only reached by many near-identical
  items under one prefix) the rest are matched to the free codes by rank in one step. Items whose
  prefix has no free code left stay colliding.
* ``"reassign+suffix"``: reassign, then suffix whatever still collides (often nothing, and then
  the SIDs keep ``levels`` codes; crowded prefixes or duplicates add the level).

``collisions_before`` counts the items that must move: items in colliding groups minus the number
of such groups (equivalently ``n_items - n_unique_tuples``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CollisionReport", "DistanceFn", "group_rows", "resolve_collisions"]

# Maps item indices [m] → squared distances [m, K] to the last-level codewords (see
# ``quantizers.make_distance_fn``).
DistanceFn = Callable[[np.ndarray], np.ndarray]
Method = Literal["suffix", "reassign", "reassign+suffix"]
_METHODS = ("suffix", "reassign", "reassign+suffix")
_DIST_CHUNK = 65536  # rows per distance_fn call / masked block, bounding [chunk, K] temporaries
_MAX_ROUNDS = 16  # exact greedy rounds before the one-step finish (see _reassign)


@dataclass
class CollisionReport:
    """What :func:`resolve_collisions` found and did."""

    method: str
    n_items: int
    levels_before: int
    levels_after: int
    collisions_before: int  # items that must move: n_items - n_unique_tuples
    collision_rate_before: float  # collisions_before / n_items
    colliding_groups_before: int  # tuples shared by ≥ 2 items
    max_group_size_before: int
    reassigned: int  # items moved to a free last-level code
    unresolved_after_reassign: int  # items still colliding after the reassign step
    suffix_size: int  # size of the appended level (0 when none was appended)
    suffix_overflow: bool  # suffix_size > codebook_size (needs a bigger suffix vocabulary)
    collisions_after: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for JSON."""
        return asdict(self)


def group_rows(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group identical rows → (group id per row [N], size per group [G]), ids in sorted-row order."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.shape[0]
    if codes.shape[1] == 0 or n == 0:
        return np.zeros(n, dtype=np.int64), np.array([n] if n else [], dtype=np.int64)
    lo = codes.min(0)
    radix = codes.max(0) - lo + 1
    # One int64 key per row when the mixed-radix number fits: 1-D unique is ~10× faster than
    # np.unique(axis=0) on a million rows.
    if float(np.prod(radix.astype(np.float64))) < 2**62:
        keys = np.zeros(n, dtype=np.int64)
        for col in range(codes.shape[1]):
            keys = keys * radix[col] + (codes[:, col] - lo[col])
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... for the members of each group, in item-index order."""
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, g_sorted.size]))
    rank = np.empty_like(groups)
    rank[order] = np.arange(groups.size) - first
    return rank


def _distances(distance_fn: DistanceFn, idx: np.ndarray) -> np.ndarray:
    """Distances [len(idx), K] as float32, asked for in chunks."""
    parts = [
        np.asarray(distance_fn(idx[s : s + _DIST_CHUNK]), dtype=np.float32)
        for s in range(0, idx.size, _DIST_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _own_distances(distance_fn: DistanceFn, idx: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Distance of each item in ``idx`` to its own last-level code (chunked, [K] kept per row)."""
    out = np.empty(idx.size, dtype=np.float32)
    for s in range(0, idx.size, _DIST_CHUNK):
        chunk = idx[s : s + _DIST_CHUNK]
        d = np.asarray(distance_fn(chunk))
        if d.ndim != 2 or d.shape[0] != chunk.size or own[s : s + chunk.size].max() >= d.shape[1]:
            raise ValueError(f"distance_fn gave shape {d.shape} for {chunk.size} items")
        out[s : s + _DIST_CHUNK] = d[np.arange(d.shape[0]), own[s : s + _DIST_CHUNK]]
    return out


def _nearest_free(
    dist: np.ndarray, rows: np.ndarray, blocked: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest non-blocked code of each row → (code, distance; inf when none is free)."""
    choice = np.empty(rows.size, dtype=np.int64)
    best = np.empty(rows.size, dtype=np.float32)
    for s in range(0, rows.size, _DIST_CHUNK):
        r = rows[s : s + _DIST_CHUNK]
        masked = np.where(blocked[s : s + _DIST_CHUNK], np.float32(np.inf), dist[r])
        choice[s : s + r.size] = masked.argmin(1)
        best[s : s + r.size] = masked[np.arange(r.size), choice[s : s + r.size]]
    return choice, best


def _reassign(codes: np.ndarray, distance_fn: DistanceFn) -> tuple[np.ndarray, int, int]:
    """LC-Rec-style move of colliding items to free last-level codes → (codes, moved, stuck)."""
    codes = codes.copy()
    groups, counts = group_rows(codes)
    colliding = np.flatnonzero(counts[groups] > 1)
    if colliding.size == 0:
        return codes, 0, 0
    last = codes[:, -1]

    # Keeper of each group: closest to the shared codeword, ties to the lowest item index. Only
    # the movers' full distance rows are kept, which bounds memory by movers × K.
    own = _own_distances(distance_fn, colliding, last[colliding])
    g = groups[colliding]
    order = np.lexsort((colliding, own, g))
    is_first = np.r_[True, g[order][1:] != g[order][:-1]]
    movers = colliding[np.sort(order[~is_first])]
    dist = _distances(distance_fn, movers)
    n_codes = dist.shape[1]

    # Occupancy [prefix, code] for the prefixes that have movers; everyone else stays put.
    prefix, _ = group_rows(codes[:, :-1])
    up, pid = np.unique(prefix[movers], return_inverse=True)
    stay = np.ones(codes.shape[0], dtype=bool)
    stay[movers] = False
    pos = np.searchsorted(up, prefix[stay]).clip(max=up.size - 1)
    hit = up[pos] == prefix[stay]
    occupied = np.zeros((up.size, n_codes), dtype=bool)
    occupied[pos[hit], last[stay][hit]] = True

    active = np.arange(movers.size)
    n_stuck = 0
    for _ in range(_MAX_ROUNDS):
        choice, best = _nearest_free(dist, active, occupied[pid[active]])
        free = np.isfinite(best)
        n_stuck += int((~free).sum())  # no free code left under this prefix
        active, choice, best = active[free], choice[free], best[free]
        if active.size == 0:
            break
        key = pid[active] * n_codes + choice
        win_order = np.lexsort((active, best, key))
        k_sorted = key[win_order]
        first = np.r_[True, k_sorted[1:] != k_sorted[:-1]]
        winners = win_order[first]
        codes[movers[active[winners]], -1] = choice[winners]
        occupied[pid[active[winners]], choice[winners]] = True
        active = np.sort(active[win_order[~first]])

    if active.size:
        # Still contested after _MAX_ROUNDS: many near-identical items under one prefix, all
        # wanting the same codes one round at a time. Finish in one step: the j-th closest
        # waiting item of a prefix takes the j-th free code in the order of that prefix's
        # closest waiting item (for near-duplicates, whose order hardly matters).
        _, best = _nearest_free(dist, active, occupied[pid[active]])
        active = active[np.lexsort((active, best, pid[active]))]
        pa = pid[active]
        starts = np.flatnonzero(np.r_[True, pa[1:] != pa[:-1]])
        rank = np.arange(active.size) - np.repeat(starts, np.diff(np.r_[starts, pa.size]))
        lead = np.where(occupied[pa[starts]], np.inf, dist[active[starts]])
        ranked_codes = np.argsort(lead, axis=1, kind="stable")
        n_free = np.isfinite(lead).sum(1)
        prefix_row = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, pa.size]))
        ok = rank < n_free[prefix_row]
        codes[movers[active[ok]], -1] = ranked_codes[prefix_row[ok], rank[ok]]
        n_stuck += int((~ok).sum())
    return codes, movers.size - n_stuck, n_stuck


def resolve_collisions(
    codes: np.ndarray,
    *,
    method: Method = "suffix",
    distance_fn: DistanceFn | None = None,
    codebook_size: int | None = None,
    always_suffix: bool = False,
) -> tuple[np.ndarray, CollisionReport]:
    """Make every row of ``codes`` [N, levels] unique → (new int64 codes, report).

    ``distance_fn`` is required by the reassign methods (see ``quantizers.make_distance_fn``);
    ``codebook_size`` only serves the ``suffix_overflow`` flag. With ``method="reassign"`` alone,
    items that find no free code keep colliding and ``report.collisions_after > 0``.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown collision method {method!r}; expected one of {_METHODS}")
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, levels], got shape {codes.shape}")
    n, levels = codes.shape
    _, counts = group_rows(codes)
    before = int(n - counts.size)
    out = codes.copy()

    moved = stuck = 0
    if method.startswith("reassign") and before:
        if distance_fn is None:
            raise ValueError(f"method {method!r} needs distance_fn")
        if levels == 0:
            raise ValueError("cannot reassign codes with zero levels")
        out, moved, stuck = _reassign(out, distance_fn)

    suffix_size = 0
    groups, counts_mid = group_rows(out)
    if method.endswith("suffix") and (always_suffix or counts_mid.size < n):
        suffix_size = int(counts_mid.max()) if n else 0
        out = np.concatenate([out, _rank_within_groups(groups)[:, None]], axis=1)

    _, counts_after = group_rows(out)
    report = CollisionReport(
        method=method,
        n_items=n,
        levels_before=levels,
        levels_after=out.shape[1],
        collisions_before=before,
        collision_rate_before=before / n if n else 0.0,
        colliding_groups_before=int((counts > 1).sum()),
        max_group_size_before=int(counts.max()) if n else 0,
        reassigned=moved,
        unresolved_after_reassign=stuck,
        suffix_size=suffix_size,
        suffix_overflow=codebook_size is not None and suffix_size > codebook_size,
        collisions_after=int(n - counts_after.size),
    )
    if report.suffix_overflow:
        logger.warning(
            "suffix level needs %d codes > codebook size %d (max group %d)",
            suffix_size,
            codebook_size,
            report.max_group_size_before,
        )
    if report.collisions_after:
        logger.warning("%d items still share a code tuple", report.collisions_after)
    logger.info(
        "collisions: %d of %d items (%.2f%%) → %d (reassigned %d, suffix size %d)",
        before,
        n,
        100 * report.collision_rate_before,
        report.collisions_after,
        moved,
        suffix_size,
    )
    return out, report
