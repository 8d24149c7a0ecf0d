"""Health checks for semantic-ID codes: codebook usage, prefix sizes, collisions, semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmrec.indexing.collisions import group_rows

__all__ = ["code_diagnostics", "format_diagnostics_table", "prefix_similarity"]


def code_diagnostics(codes: np.ndarray, codebook_sizes: int | Sequence[int]) -> dict[str, Any]:
    """Per-level utilisation and perplexity, items per prefix, and collision counts.

    ``codebook_sizes`` is one size for every level or one per level; levels beyond the given
    sizes (e.g. an appended suffix level) use their largest code + 1.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, levels], got shape {codes.shape}")
    n, levels = codes.shape
    if isinstance(codebook_sizes, int):
        sizes = [codebook_sizes] * levels
    else:
        sizes = list(codebook_sizes)[:levels]
    sizes += [0] * (levels - len(sizes))
    # A size below the largest code + 1 (a missing size, or a suffix level that outgrew the
    # codebook) is raised to it, so utilisation never exceeds 100%.
    sizes = [max(s, int(codes[:, lv].max()) + 1) if n else s for lv, s in enumerate(sizes)]

    per_level = []
    for lv in range(levels):
        counts = np.bincount(codes[:, lv], minlength=sizes[lv]) if n else np.zeros(0)
        p = counts[counts > 0] / n if n else np.zeros(0)
        entropy = float(-(p * np.log(p)).sum())
        used = int((counts > 0).sum())
        per_level.append(
            {
                "level": lv,
                "codebook_size": sizes[lv],
                "used": used,
                "utilisation": used / sizes[lv] if sizes[lv] else 0.0,
                # exp(entropy): the number of equally used codes with the same spread.
                "perplexity": float(np.exp(entropy)),
            }
        )

    per_prefix = []
    for depth in range(1, levels + 1):
        _, sizes_at_depth = group_rows(codes[:, :depth])
        per_prefix.append(
            {
                "depth": depth,
                "n_prefixes": int(sizes_at_depth.size),
                "items_min": int(sizes_at_depth.min()) if n else 0,
                "items_mean": float(sizes_at_depth.mean()) if n else 0.0,
                "items_max": int(sizes_at_depth.max()) if n else 0,
            }
        )

    _, group_sizes = group_rows(codes)
    collisions = int(n - group_sizes.size)
    return {
        "n_items": n,
        "levels": levels,
        "per_level": per_level,
        "per_prefix": per_prefix,
        "collisions": {
            "n_unique": int(group_sizes.size),
            "items_to_move": collisions,
            "collision_rate": collisions / n if n else 0.0,
            "colliding_groups": int((group_sizes > 1).sum()),
            "max_group_size": int(group_sizes.max()) if n else 0,
        },
    }


def format_diagnostics_table(d: dict[str, Any]) -> str:
    """Render :func:`code_diagnostics` output as a fixed-width text table."""
    lines = [f"items: {d['n_items']}   levels: {d['levels']}", ""]
    lines.append(f"{'level':>5} {'size':>7} {'used':>7} {'util':>7} {'perplexity':>11}")
    for row in d["per_level"]:
        lines.append(
            f"{row['level']:>5} {row['codebook_size']:>7} {row['used']:>7} "
            f"{row['utilisation']:>7.1%} {row['perplexity']:>11.1f}"
        )
    lines += ["", f"{'depth':>5} {'prefixes':>9} {'min':>7} {'mean':>9} {'max':>7}"]
    for row in d["per_prefix"]:
        lines.append(
            f"{row['depth']:>5} {row['n_prefixes']:>9} {row['items_min']:>7} "
            f"{row['items_mean']:>9.2f} {row['items_max']:>7}"
        )
    c = d["collisions"]
    lines += [
        "",
        f"unique tuples: {c['n_unique']}   items to move: {c['items_to_move']} "
        f"({c['collision_rate']:.2%})   colliding groups: {c['colliding_groups']}   "
        f"max group: {c['max_group_size']}",
    ]
    return "\n".join(lines)


def _row_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows a[i] and b[i] of ``x`` (only the sampled rows are touched)."""
    xa, xb = x[a].astype(np.float64), x[b].astype(np.float64)
    norms = np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1)
    return np.einsum("ij,ij->i", xa, xb) / np.maximum(norms, 1e-12)


def prefix_similarity(
    embeddings: np.ndarray,
    codes: np.ndarray,
    *,
    depth: int = 1,
    n_pairs: int = 10_000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean cosine similarity of sampled item pairs sharing a ``depth``-code prefix vs. random.

    A clearly higher same-prefix mean shows that the codes carry the embeddings' semantics.
    """
    emb = np.asarray(embeddings)  # no copy: a 1M-item catalog is gigabytes
    codes = np.asarray(codes, dtype=np.int64)
    n = emb.shape[0]
    if codes.shape[0] != n:
        raise ValueError(f"{n} embeddings but {codes.shape[0]} code rows")
    rng = np.random.default_rng(seed)

    groups, sizes = group_rows(codes[:, :depth])
    # Items of each group laid out contiguously: members of group g are order[start[g]:...].
    order = np.argsort(groups, kind="stable")
    start = np.cumsum(sizes) - sizes
    pos_in_group = np.empty(n, dtype=np.int64)
    pos_in_group[order] = np.arange(n) - start[groups[order]]
    eligible = np.flatnonzero(sizes[groups] > 1)

    same_mean, n_same = float("nan"), 0
    if eligible.size:
        a = rng.choice(eligible, size=n_pairs)
        g = groups[a]
        # A partner uniformly among the other members: draw from size - 1 slots, skip oneself.
        off = (rng.random(n_pairs) * (sizes[g] - 1)).astype(np.int64)
        off += off >= pos_in_group[a]
        b = order[start[g] + off]
        same_mean, n_same = float(_row_cosines(emb, a, b).mean()), n_pairs

    rand_mean, n_rand = float("nan"), 0
    if n > 1:
        a = rng.integers(0, n, size=n_pairs)
        b = (a + rng.integers(1, n, size=n_pairs)) % n  # any item but a itself
        rand_mean, n_rand = float(_row_cosines(emb, a, b).mean()), n_pairs
    return {
        "depth": depth,
        "same_prefix_mean_cos": same_mean,
        "random_mean_cos": rand_mean,
        "lift": same_mean - rand_mean,
        "n_same_pairs": n_same,
        "n_random_pairs": n_rand,
    }
