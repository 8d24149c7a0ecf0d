"""``ItemTrie``: every catalog item's token sequence, answering "which tokens may come next" for a
whole batch of beams in a few tensor operations on the model's device.

Layout (CSR, built once with numpy, stored as torch tensors):

* nodes are numbered depth by depth (root = 0); a node's outgoing edges are the contiguous range
  ``edge_token[node_offset[n] : node_offset[n + 1]]`` (sorted by token), leading to
  ``edge_child`` nodes; ``edge_key = parent * key_base + token`` is sorted, so a transition is one
  ``searchsorted``;
* a node without edges is *terminal*: the item's sequence (its SID tokens and the end token) is
  complete, and ``node_item`` says which item it is.

A beam's state is never stored between calls: it is recomputed from the tokens generated so far
(at most a few ``searchsorted`` steps), so beam reordering, left padding or a restarted generate
cannot desynchronise it. Nothing here leaves the device or syncs with the host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llmrec.constrain.dense import DepthTable, build_tables, mask_scores

logger = logging.getLogger(__name__)

DEAD = -1  # the generated tokens left the trie (only possible without the constraint)
FINISHED = -2  # a terminal node was passed; whatever follows (padding) is ignored
KEY_BASE = 1 << 32  # edge_key = parent * KEY_BASE + token


@dataclass(frozen=True, eq=False)
class ItemTrie:
    """Token-level trie over the catalog; see the module docstring for the layout."""

    edge_key: torch.Tensor  # int64 [E], sorted
    edge_token: torch.Tensor  # int64 [E]
    edge_child: torch.Tensor  # int64 [E]
    node_offset: torch.Tensor  # int64 [N + 1]
    node_item: torch.Tensor  # int64 [N], -1 for inner nodes
    key_base: int
    max_children: tuple[int, ...]  # per depth: the widest node at that depth
    item_ids: tuple[str, ...]
    end_token_id: int
    # Dense per-depth tables (``dense.py``) make ``constrain`` 4 ops a token for SID-like
    # catalogs; False keeps only the general CSR path (the tests compare the two).
    dense: bool = True
    # Derived in __post_init__: per depth, the range of edges leaving that depth's nodes
    # (plain ints, so walks slice them without touching the device), whether any token but
    # the end token can follow there, and the dense tables of the fast path (``dense.py``).
    depth_edges: tuple[tuple[int, int], ...] = field(init=False, repr=False)
    depth_open: tuple[bool, ...] = field(init=False, repr=False)
    tables: tuple[DepthTable | None, ...] = field(init=False, repr=False)
    end_column: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        offset = self.node_offset.cpu()
        token = self.edge_token.cpu()
        parent = self.edge_key.cpu() // self.key_base
        edges, is_open = [], []
        lo_node, hi_node = 0, 1  # nodes are numbered depth by depth; the root is depth 0
        for _ in range(self.depth):
            e0, e1 = int(offset[lo_node]), int(offset[min(hi_node, offset.numel() - 1)])
            edges.append((e0, e1))
            is_open.append(bool((token[e0:e1] != self.end_token_id).any()))
            lo_node, hi_node = hi_node, hi_node + (e1 - e0)
        tables = build_tables(offset, token, parent, self.end_token_id, self.max_children)
        device = self.edge_key.device
        moved = tuple(None if t is None else t.to(device) for t in tables)
        object.__setattr__(self, "depth_edges", tuple(edges))
        object.__setattr__(self, "depth_open", tuple(is_open))
        object.__setattr__(self, "tables", moved)
        object.__setattr__(self, "end_column", torch.tensor([self.end_token_id], device=device))

    # ---- building -----------------------------------------------------------------------

    @classmethod
    def from_sequences(
        cls, sequences: np.ndarray, item_ids: Sequence[str], end_token_id: int
    ) -> ItemTrie:
        """Build from token sequences [n_items, depth] (pad with -1 after a shorter sequence).

        Each sequence must end with ``end_token_id`` and be unique.
        """
        seqs = np.asarray(sequences, dtype=np.int64)
        if seqs.ndim != 2 or seqs.shape[0] != len(item_ids) or seqs.shape[0] == 0:
            raise ValueError(f"sequences must be [n_items={len(item_ids)}, depth], non-empty")
        lengths = (seqs >= 0).sum(1)
        last = seqs[np.arange(len(seqs)), lengths - 1]
        if (last != end_token_id).any():
            bad = int(np.flatnonzero(last != end_token_id)[0])
            raise ValueError(f"item {item_ids[bad]!r}: sequence does not end with the end token")
        # 2**32: no token id (negative junk included) can make one node's key alias another's,
        # so the walk in ``constrain`` needs no range checks.
        key_base = KEY_BASE
        if seqs.max() >= KEY_BASE:
            raise ValueError(f"token ids must be below {KEY_BASE}")
        n_items, depth = seqs.shape
        node = np.zeros(n_items, dtype=np.int64)  # everyone starts at the root
        next_id = 1
        keys, tokens, children, max_children = [], [], [], []
        for d in range(depth):
            active = seqs[:, d] >= 0
            key = node[active] * key_base + seqs[active, d]
            uniq, inverse = np.unique(key, return_inverse=True)
            child = next_id + np.arange(len(uniq), dtype=np.int64)
            next_id += len(uniq)
            keys.append(uniq)
            tokens.append(uniq % key_base)
            children.append(child)
            parents = uniq // key_base
            max_children.append(int(np.bincount(parents - parents.min()).max()))
            node[active] = child[inverse.reshape(-1)]
        leaf_counts = np.bincount(node, minlength=next_id)
        if (leaf_counts > 1).any():
            dup = item_ids[int(np.flatnonzero(leaf_counts[node] > 1)[0])]
            raise ValueError(f"two items share one token sequence (e.g. {dup!r})")
        edge_key = np.concatenate(keys)
        parent = edge_key // key_base
        offsets = np.zeros(next_id + 1, dtype=np.int64)
        np.cumsum(np.bincount(parent, minlength=next_id), out=offsets[1:])
        node_item = np.full(next_id, -1, dtype=np.int64)
        node_item[node] = np.arange(n_items)
        t = torch.from_numpy
        return cls(
            t(edge_key),
            t(np.concatenate(tokens)),
            t(np.concatenate(children)),
            t(offsets),
            t(node_item),
            key_base,
            tuple(max_children),
            tuple(item_ids),
            int(end_token_id),
        )

    @classmethod
    def from_sid_map(
        cls, sid_map: Any, tokenizer: Any, end_token_id: int | None = None, check: int = 64
    ) -> ItemTrie:
        """Build from a ``SemanticIdMap`` whose tokens were added whole to ``tokenizer``.

        Token ids come from a per-level lookup table (vectorised; no tokenizer call per item);
        the first ``check`` items are also tokenised for real to make sure that holds.
        """
        if end_token_id is None:
            end_token_id = tokenizer.eos_token_id
        if end_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; pass end_token_id")
        tables = []
        for level, size in enumerate(sid_map.codebook_sizes):
            names = [sid_map.token(level, c) for c in range(size)]
            ids = tokenizer.convert_tokens_to_ids(names)
            unk = getattr(tokenizer, "unk_token_id", None)
            if any(i is None or i == unk for i in ids):
                raise ValueError(
                    "SID tokens are missing from the tokenizer; add them with "
                    "llmrec.tokens.add_sid_tokens()"
                )
            tables.append(np.asarray(ids, dtype=np.int64))
        codes = sid_map.codes
        seqs = np.stack(
            [tables[lv][codes[:, lv]] for lv in range(sid_map.levels)]
            + [np.full(len(codes), end_token_id)],
            axis=1,
        )
        # Format only the SIDs checked: all of them would take seconds at 1M items.
        checked = ["".join(sid_map.token(lv, c) for lv, c in enumerate(r)) for r in codes[:check]]
        for row, sid in zip(seqs[:check], checked, strict=True):
            got = tokenizer(sid, add_special_tokens=False)["input_ids"]
            if list(got) != row[:-1].tolist():
                raise ValueError(
                    f"SID {sid!r} tokenises as {got}, not as its {sid_map.levels} "
                    "tokens; add the SID tokens with add_sid_tokens()"
                )
        return cls.from_sequences(seqs, sid_map.item_ids, end_token_id)

    def to(self, device: torch.device | str) -> ItemTrie:
        """The same trie with its tensors on ``device``."""
        move = {
            name: getattr(self, name).to(device)
            for name in ("edge_key", "edge_token", "edge_child", "node_offset", "node_item")
        }
        return ItemTrie(
            **move,
            key_base=self.key_base,
            max_children=self.max_children,
            item_ids=self.item_ids,
            end_token_id=self.end_token_id,
            dense=self.dense,
        )

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.edge_key.device

    @property
    def depth(self) -> int:
        """Tokens in the longest item sequence (SID tokens + end token)."""
        return len(self.max_children)

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors (dense mask tables included)."""
        tables = sum(t.nbytes for t in self.tables if t is not None)
        return tables + sum(
            t.numel() * t.element_size()
            for t in (
                self.edge_key,
                self.edge_token,
                self.edge_child,
                self.node_offset,
                self.node_item,
            )
        )

    # ---- queries (vectorised over a batch) ---------------------------------------------------

    def step(
        self, nodes: torch.Tensor, tokens: torch.Tensor, depth: int | None = None
    ) -> torch.Tensor:
        """Follow one token from each node; off-trie → DEAD, after a terminal → FINISHED.

        With ``depth`` (every live node is at that depth) only that depth's edges are searched.
        """
        live = nodes >= 0
        safe = nodes.clamp(min=0)
        terminal = self.node_offset[safe + 1] == self.node_offset[safe]
        key = safe * self.key_base + tokens.clamp(min=0, max=self.key_base - 1)
        keys, child = self.edge_key, self.edge_child
        if depth is not None and depth < self.depth:
            e0, e1 = self.depth_edges[depth]
            keys, child = keys[e0:e1], child[e0:e1]
        if keys.numel() == 0:
            found = torch.zeros_like(live)
            child_of = torch.full_like(nodes, DEAD)
        else:
            pos = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
            found = (keys[pos] == key) & (tokens >= 0) & (tokens < self.key_base)
            child_of = child[pos]
        out = torch.where(found, child_of, DEAD)
        out = torch.where(live & terminal, FINISHED, out)
        return torch.where(live, out, nodes)

    def walk(self, generated: torch.Tensor) -> torch.Tensor:
        """The node reached by each row of generated token ids [B, T] (T may be 0)."""
        nodes = torch.zeros(generated.shape[0], dtype=torch.long, device=generated.device)
        for t in range(generated.shape[1]):
            nodes = self.step(nodes, generated[:, t], depth=t)
        return nodes

    def children(
        self, nodes: torch.Tensor, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges out of nodes at ``depth``: tokens, child nodes, validity, each [B, width].

        Rows are padded to the widest node at that depth by repeating their last edge.
        """
        width = self.max_children[depth] if depth < self.depth else 1
        safe = nodes.clamp(min=0)
        start = self.node_offset[safe]
        count = self.node_offset[safe + 1] - start
        offs = torch.arange(width, device=nodes.device)
        idx = start[:, None] + torch.minimum(offs[None, :], (count - 1).clamp(min=0)[:, None])
        idx = idx.clamp(max=self.edge_token.numel() - 1)
        valid = (offs[None, :] < count[:, None]) & (nodes >= 0)[:, None]
        return self.edge_token[idx], self.edge_child[idx], valid

    def allowed(self, nodes: torch.Tensor, depth: int) -> torch.Tensor:
        """Allowed next tokens [B, width] for nodes at ``depth`` (rows padded by repetition).

        Terminal, finished and dead rows may only continue with the end token, so that finished
        sequences can be padded and sampling never sees a row without a finite score.
        """
        tokens, _, valid = self.children(nodes, depth)
        open_row = valid[:, :1]
        return torch.where(open_row, tokens, torch.full_like(tokens, self.end_token_id))

    def banned_nodes(self, exclude: list[list[int]]) -> torch.Tensor:
        """Per user, the nodes every path through which ends in an excluded item [U, N].

        ``exclude[u]`` lists item indices. A node is banned when all its children are, so a
        constrained search never walks into a prefix that can only end in excluded items. The
        root is banned only if the whole catalog is excluded.
        """
        n_nodes = self.node_item.numel()
        banned = torch.zeros((len(exclude), n_nodes), dtype=torch.bool, device=self.device)
        leaf_of_item = torch.zeros(len(self.item_ids), dtype=torch.long, device=self.device)
        is_leaf = self.node_item >= 0
        leaf_of_item[self.node_item[is_leaf]] = torch.nonzero(is_leaf).squeeze(1)
        for u, items in enumerate(exclude):
            if items:
                banned[u, leaf_of_item[torch.tensor(items, device=self.device)]] = True
        parent = self.edge_key // self.key_base
        n_children = (self.node_offset[1:] - self.node_offset[:-1]).to(torch.float32)
        # Nodes are numbered by depth and edges sorted by parent, so one pass per depth from
        # the leaves up settles every node: banned when its banned children cover all of them.
        for _ in range(self.depth):
            hits = torch.zeros((len(exclude), n_nodes), device=self.device)
            hits.index_add_(1, parent, banned[:, self.edge_child].to(torch.float32))
            banned |= (n_children > 0) & (hits >= n_children)
        return banned

    def constrain(
        self,
        scores: torch.Tensor,
        generated: torch.Tensor,
        banned: torch.Tensor | None = None,
        banned_rows: torch.Tensor | None = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Scores with everything but the allowed next tokens set to -inf.

        ``banned`` [P, N] (from ``banned_nodes``) also forbids the tokens leading into banned
        nodes; score row r uses ban row ``banned_rows[r]`` (default: row r). The ban matrix is
        read through a flat index, never repeated per beam. A row whose allowed tokens all
        score -inf (an earlier processor, or bans) gets 0 on each of them instead: better a
        uniform choice among valid items than an invalid one. ``inplace`` writes into
        ``scores`` instead of a fresh tensor (one allocation of rows × vocabulary less).
        """
        depth = generated.shape[1]
        end = self.end_token_id
        if self.dense and banned is None:
            if depth >= self.depth or not self.depth_open[depth]:
                # Only the end token can follow anywhere at this depth: no walk needed.
                if inplace:
                    # The end column, -inf turned to 0; -inf fills on either side of it.
                    scores[:, end].nan_to_num_(neginf=0.0)
                    scores[:, :end].fill_(-torch.inf)
                    scores[:, end + 1 :].fill_(-torch.inf)
                    return scores
                kept = scores.index_select(1, self.end_column).nan_to_num_(neginf=0.0)
                out = torch.full_like(scores, -torch.inf)
                return out.index_copy_(1, self.end_column, kept)
            table = self.tables[depth]
            if table is not None:
                return mask_scores(scores, table, self._table_rows(generated, table), inplace)
        nodes = self.walk(generated)
        tokens, children, valid = self.children(nodes, depth)
        open_row = valid[:, :1]
        # Terminal, finished and dead rows may only continue with the end token, so finished
        # sequences can be padded and sampling never sees a row without a finite score.
        allowed = torch.where(open_row, tokens, end)
        kept = scores.gather(1, allowed)
        if banned is not None:
            # Padding columns repeat a real edge and so take its ban too.
            rows = (
                torch.arange(len(children), device=children.device)
                if banned_rows is None
                else banned_rows
            )
            flat = banned.reshape(-1)[rows[:, None] * banned.shape[1] + children]
            kept = kept.masked_fill(open_row & flat, float("-inf"))
        stuck = kept.amax(1, keepdim=True).isneginf()
        if scores.device.type != "cpu" or bool(stuck.any()):
            kept = torch.where(stuck, 0.0, kept)
        out = scores.fill_(float("-inf")) if inplace else torch.full_like(scores, -torch.inf)
        return out.scatter_(1, allowed, kept)

    def _table_rows(self, generated: torch.Tensor, table: DepthTable) -> torch.Tensor | None:
        """Each beam's row in ``table`` (its depth's; None at the root): through the tables'
        transitions when every depth above has one, else a lean CSR walk (6 ops a token)."""
        depth = generated.shape[1]
        if depth == 0:
            return None
        above = self.tables[:depth]
        if all(t is not None and t.next_row is not None for t in above):
            first = above[0]
            assert first is not None and first.root_next is not None  # the root's table
            tokens = generated[:, 0].clamp(max=first.root_next.numel() - 1)
            rows = first.root_next[tokens]
            for t in range(1, depth):
                rows = above[t].step(rows, generated[:, t])  # type: ignore[union-attr]
            return rows
        # Dead and finished beams land on node N, past every key, hence on the sentinel row.
        n_nodes = self.node_offset.numel() - 1
        nodes = torch.zeros(generated.shape[0], dtype=torch.long, device=generated.device)
        for t in range(depth):
            e0, e1 = self.depth_edges[t]
            keys = self.edge_key[e0:e1]
            key = torch.add(generated[:, t], nodes, alpha=self.key_base)
            pos = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
            nodes = torch.where(keys[pos] == key, self.edge_child[e0:e1][pos], n_nodes)
        return (nodes - table.first_node).clamp_(0, table.allowed.shape[0] - 1)

    def items_of(self, generated: torch.Tensor) -> list[str | None]:
        """The item each row of generated tokens names (None if it names none)."""
        nodes = self.walk_until_end(generated)
        items = torch.where(nodes >= 0, self.node_item[nodes.clamp(min=0)], -1).tolist()
        return [self.item_ids[i] if i >= 0 else None for i in items]

    def walk_until_end(self, generated: torch.Tensor) -> torch.Tensor:
        """Like ``walk`` but stops at a terminal node instead of moving past it."""
        nodes = torch.zeros(generated.shape[0], dtype=torch.long, device=generated.device)
        for t in range(generated.shape[1]):
            nxt = self.step(nodes, generated[:, t])
            nodes = torch.where(nxt == FINISHED, nodes, nxt)
        return nodes

    def item_sequences(self) -> torch.Tensor:
        """Every item's token sequence [n_items, depth] (-1 padded), from the tree itself."""
        n_nodes = self.node_item.numel()
        parent = torch.zeros(n_nodes, dtype=torch.long, device=self.device)
        parent[self.edge_child] = self.edge_key // self.key_base
        token = torch.full((n_nodes,), -1, dtype=torch.long, device=self.device)
        token[self.edge_child] = self.edge_token
        leaves = torch.zeros(len(self.item_ids), dtype=torch.long, device=self.device)
        is_leaf = self.node_item >= 0
        leaves[self.node_item[is_leaf]] = torch.nonzero(is_leaf).squeeze(1)
        cols, node = [], leaves
        for _ in range(self.depth):
            cols.append(torch.where(node > 0, token[node], -1))
            node = torch.where(node > 0, parent[node], node)
        seqs = torch.stack(cols[::-1], dim=1)
        # Shorter sequences come out left-padded; shift them to the left.
        shift = (seqs < 0).sum(1)
        idx = torch.arange(self.depth, device=self.device)[None, :] + shift[:, None]
        return torch.where(idx < self.depth, seqs.gather(1, idx.clamp(max=self.depth - 1)), -1)
