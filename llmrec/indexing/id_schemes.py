"""Non-semantic item indexing for ablations, after Hua et al., "How to Index Item IDs for
Recommendation Foundation Models" (2023): random, sequential and collaborative indexing.

All return int64 codes [n_items, levels] with every code below ``codebook_size``, in the order of
the ``item_ids`` they are given, ready for the same collision check and ``SemanticIdMap``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from llmrec.errors import UserError


def _digits(numbers: np.ndarray, levels: int, base: int) -> np.ndarray:
    """Write each number in base ``base`` with ``levels`` digits, most significant first."""
    if len(numbers) and int(numbers.max()) >= base**levels:
        raise UserError(
            f"{int(numbers.max()) + 1} items do not fit in {levels} levels of {base} codes; "
            "raise levels or codebook_size"
        )
    powers = base ** np.arange(levels - 1, -1, -1, dtype=np.int64)
    return (numbers[:, None] // powers[None, :]) % base


def random_codes(n_items: int, levels: int, codebook_size: int, seed: int) -> np.ndarray:
    """Random indexing: distinct random code tuples, unrelated to content or behaviour."""
    rng = np.random.default_rng(seed)
    space = codebook_size**levels
    if n_items > space:
        raise UserError(f"{n_items} items do not fit in {space} code tuples")
    numbers = rng.choice(space, size=n_items, replace=False)
    return _digits(numbers.astype(np.int64), levels, codebook_size)


def sequential_codes(
    item_ids: list[str], train_sequences: list[list[str]], levels: int, codebook_size: int
) -> np.ndarray:
    """Sequential indexing: number items in order of first appearance, user after user.

    Items that follow each other in users' histories get neighbouring numbers, so they share
    leading digits. Items never seen in training come last, in ``item_ids`` order.
    """
    seen = pd.unique(pd.Series([i for seq in train_sequences for i in seq], dtype="str"))
    order = pd.Index(list(seen) + [i for i in item_ids if i not in set(seen)])
    numbers = order.get_indexer(pd.Index(item_ids)).astype(np.int64)
    return _digits(numbers, levels, codebook_size)


def cooccurrence_embedding(
    item_ids: list[str], train_sequences: list[list[str]], dim: int, window: int, seed: int
) -> np.ndarray:
    """Spectral embedding of the item co-occurrence graph (items within ``window`` steps).

    Uses the top eigenvectors of the symmetrically normalised adjacency D^-½ A D^-½, computed
    with a randomised low-rank SVD on a sparse matrix, so it scales to large catalogs.
    """
    index = {item: i for i, item in enumerate(item_ids)}
    n = len(item_ids)
    rows, cols = [], []
    for seq in train_sequences:
        ids = np.array([index[i] for i in seq if i in index], dtype=np.int64)
        for offset in range(1, window + 1):
            if len(ids) > offset:
                rows.append(ids[:-offset])
                cols.append(ids[offset:])
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
        r, c = np.concatenate([r, c]), np.concatenate([c, r])  # undirected
    else:
        r = c = np.zeros(0, dtype=np.int64)
    # Self-loops keep isolated (cold) items well defined: they get their own direction.
    r, c = np.concatenate([r, np.arange(n)]), np.concatenate([c, np.arange(n)])
    weights = torch.ones(len(r), dtype=torch.float64)
    indices = torch.from_numpy(np.stack([r, c]))
    adj = torch.sparse_coo_tensor(indices, weights, (n, n), check_invariants=False).coalesce()
    degree = torch.sparse.sum(adj, dim=1).to_dense()
    inv_sqrt = degree.clamp(min=1e-12).rsqrt()
    idx = adj.indices()
    values = adj.values() * inv_sqrt[idx[0]] * inv_sqrt[idx[1]]
    norm = torch.sparse_coo_tensor(idx, values, (n, n), check_invariants=False).coalesce()
    q = min(dim, n)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws its random projection from the global RNG
    try:
        u, s, _ = torch.svd_lowrank(norm, q=q, niter=6)
    finally:
        torch.random.set_rng_state(generator_state)
    return (u * s.sqrt()).to(torch.float32).numpy()
