"""Dense per-depth tables: the fast path of ``ItemTrie.constrain`` for SID-like catalogs.

The CSR trie answers any query, but each step of a generic walk costs a handful of tensor
operations, and in a decoding loop every operation costs tens of microseconds however small
its tensor (caches are cold after the model's forward pass). SID catalogs have few distinct
tokens per depth (one codebook), so each depth fits a dense table:

* ``allowed[row, column]``: may the node on ``row`` continue with ``columns[column]``? Rows are
  the depth's nodes in id order plus a last *sentinel* row (dead or finished beams: end token
  only); columns are every token used at that depth and the end token.
* ``next_row[row, column]``: the row of the child in the next depth's table (the sentinel when
  there is none); an extra last column catches every token not used at that depth.

A beam's row is then 4 operations per generated token (2 for the first: ``root_next`` maps a
token straight to its row), its allowed tokens one row gather. Added SID tokens are usually
consecutive ids, so a depth's columns are one contiguous *span* plus the end token: masking is
then in place on views (``masked_fill_`` on the span and the end column, -inf fills around them),
with no column gather or scatter over [rows, vocabulary]; otherwise ``index_select`` / ``where``
/ ``index_copy_`` over [rows, columns] plus the -inf fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Tables are built while they stay under these many entries (bool ``allowed``, int32
# ``next_row``): 3 × 256 SIDs at 1M items take 16.8 MB in all.
MAX_ALLOWED_ENTRIES = 1 << 25
MAX_NEXT_ROW_ENTRIES = 1 << 23
# ... and while a depth's column count stays below this many times its widest node (or 4096),
# so that a dense pass over the columns costs no more than gathering the allowed tokens.
WIDTH_FACTOR, WIDTH_MIN = 16, 4096


@dataclass(frozen=True)
class DepthTable:
    """Allowed tokens and transitions of every node at one depth (see the module docstring)."""

    first_node: int
    columns: torch.Tensor  # int64 [C], sorted token ids, the end token among them
    allowed: torch.Tensor  # bool [nodes + 1, C]
    col_of_token: torch.Tensor  # int32 [max(columns) + 2]: column index, C when not a column
    next_row: torch.Tensor | None = None  # int32 [nodes + 1, C + 1]
    # int32 [max(columns) + 2]: next_row[0, col_of_token[token]], for tables of a single node
    root_next: torch.Tensor | None = None
    # float32 [nodes + 1, C]: 0 where allowed, -inf elsewhere (span tables only: adding it to a
    # view of the scores is several times faster on CPU than a boolean masked_fill_)
    additive: torch.Tensor | None = None
    # (lo, hi, end column, end token) when the columns are the tokens lo..hi-1 plus the end
    # token as first or last column (end column -1: the end token lies inside lo..hi-1)
    span: tuple[int, int, int, int] | None = None

    @property
    def nbytes(self) -> int:
        """Memory held by the tables."""
        tensors = [self.columns, self.allowed, self.col_of_token]
        tensors += [t for t in (self.next_row, self.root_next, self.additive) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> DepthTable:
        """The same table on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return DepthTable(
            self.first_node,
            self.columns.to(device),
            self.allowed.to(device),
            self.col_of_token.to(device),
            move(self.next_row),
            move(self.root_next),
            move(self.additive),
            self.span,
        )

    def step(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Rows in the next depth's table after ``tokens`` (int32 in, int32 out)."""
        assert self.next_row is not None
        column = self.col_of_token[tokens.clamp(max=self.col_of_token.numel() - 1)]
        width = self.next_row.shape[1]
        return self.next_row.view(-1)[torch.add(column, rows, alpha=width)]


def build_tables(
    node_offset: torch.Tensor,
    edge_token: torch.Tensor,
    edge_parent: torch.Tensor,
    end_token_id: int,
    max_children: tuple[int, ...],
) -> tuple[DepthTable | None, ...]:
    """One ``DepthTable`` per depth (``None`` where a depth has no token but the end token, or
    its table would be too large), from the CSR arrays on the CPU."""
    n_nodes = node_offset.numel() - 1
    tables: list[DepthTable | None] = []
    spans: list[tuple[int, int, int, int]] = []  # per depth: first node, end node, e0, e1
    lo_node, hi_node = 0, 1  # nodes are numbered depth by depth; the root is depth 0
    for d in range(len(max_children)):
        hi_node = min(hi_node, n_nodes)
        e0, e1 = int(node_offset[lo_node]), int(node_offset[hi_node])
        spans.append((lo_node, hi_node, e0, e1))
        tables.append(
            _allowed_table(
                node_offset,
                edge_token[e0:e1],
                edge_parent[e0:e1],
                lo_node,
                hi_node,
                end_token_id,
                max_children[d],
            )
        )
        lo_node, hi_node = hi_node, hi_node + (e1 - e0)
    for d in range(len(tables) - 1):
        here, below = tables[d], tables[d + 1]
        if here is None or below is None:
            continue
        rows, width = here.allowed.shape[0], here.allowed.shape[1] + 1
        if rows * width > MAX_NEXT_ROW_ENTRIES:
            continue
        lo_node, _, e0, e1 = spans[d]
        sentinel = below.allowed.shape[0] - 1
        next_row = torch.full((rows, width), sentinel, dtype=torch.int32)
        # Edge e leads to node e + 1 (children are numbered in edge order), at row
        # e + 1 - first_node of the next depth.
        child_row = torch.arange(e0, e1, dtype=torch.int64) + 1 - below.first_node
        column = here.col_of_token[edge_token[e0:e1]].long()
        next_row[edge_parent[e0:e1] - lo_node, column] = child_row.to(torch.int32)
        # A single-node depth (the root): one lookup from token to row.
        root_next = next_row[0][here.col_of_token.long()] if rows == 2 else None
        tables[d] = DepthTable(
            here.first_node,
            here.columns,
            here.allowed,
            here.col_of_token,
            next_row,
            root_next,
            here.additive,
            here.span,
        )
    return tuple(tables)


def _allowed_table(
    node_offset: torch.Tensor,
    token: torch.Tensor,
    parent: torch.Tensor,
    lo_node: int,
    hi_node: int,
    end_token_id: int,
    widest: int,
) -> DepthTable | None:
    """The ``allowed`` table of one depth, or None."""
    if not bool((token != end_token_id).any()):
        return None  # only the end token can follow here: no table needed
    columns = torch.unique(torch.cat([token, torch.tensor([end_token_id])]))
    rows = hi_node - lo_node + 1
    if len(columns) > max(WIDTH_FACTOR * widest, WIDTH_MIN) or (
        rows * len(columns) > MAX_ALLOWED_ENTRIES
    ):
        return None
    # Added SID tokens have consecutive ids: when this depth's tokens fill most of their id
    # range, take the whole range (unused ids: never allowed) so that masking works on a span.
    codes = token[token != end_token_id]
    lo, hi = int(codes.min()), int(codes.max()) + 1
    span = None
    if 2 * (hi - lo) <= 3 * len(columns) + 16 and rows * (hi - lo + 1) <= MAX_ALLOWED_ENTRIES:
        columns = torch.unique(torch.cat([torch.arange(lo, hi), torch.tensor([end_token_id])]))
        end_col = -1 if lo <= end_token_id < hi else (0 if end_token_id < lo else hi - lo)
        span = (lo, hi, end_col, end_token_id)
    col_of_token = torch.full((int(columns.max()) + 2,), len(columns), dtype=torch.int32)
    col_of_token[columns] = torch.arange(len(columns), dtype=torch.int32)
    end_col = int(col_of_token[end_token_id])
    allowed = torch.zeros((rows, len(columns)), dtype=torch.bool)
    allowed[parent - lo_node, col_of_token[token].long()] = True
    leaf = node_offset[lo_node + 1 : hi_node + 1] == node_offset[lo_node:hi_node]
    allowed[:-1, end_col] |= leaf  # a finished item may only be followed by the end token
    allowed[-1, end_col] = True  # the sentinel row: dead or finished beams
    if span is None:
        return DepthTable(lo_node, columns, allowed, col_of_token)
    additive = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
    return DepthTable(lo_node, columns, allowed, col_of_token, additive=additive, span=span)


def mask_scores(
    scores: torch.Tensor, table: DepthTable, rows: torch.Tensor | None, inplace: bool
) -> torch.Tensor:
    """``scores`` with everything but each row's allowed tokens at -inf (``rows`` None: all
    beams at the depth's first node, i.e. the root). Rows whose allowed tokens all score -inf
    get 0 on each of them instead, so that sampling still picks a valid token."""
    if inplace and table.span is not None and table.additive is not None:
        add = table.additive[:1] if rows is None else table.additive[rows]
        return _mask_span_inplace(scores, add, table.span)
    mask = table.allowed[:1] if rows is None else table.allowed[rows]
    kept = torch.where(mask, scores.index_select(1, table.columns), float("-inf"))
    # On CPU the fallback runs only when needed (one host read); on accelerators always, to
    # avoid the sync.
    if scores.device.type != "cpu" or kept.amax(1).min().item() == float("-inf"):
        stuck = kept.amax(1, keepdim=True).isneginf()
        kept = torch.where(stuck & mask, 0.0, kept)
    out = scores.fill_(float("-inf")) if inplace else torch.full_like(scores, float("-inf"))
    return out.index_copy_(1, table.columns, kept)


def _mask_span_inplace(
    scores: torch.Tensor, add: torch.Tensor, span: tuple[int, int, int, int]
) -> torch.Tensor:
    """``mask_scores`` in place when the columns are a token span plus the end token: add the
    rows' 0/-inf masks ``add`` onto the span and the end column where they lie, -inf elsewhere
    (no gather or scatter over the vocabulary)."""
    lo, hi, end_col, end = span
    window = scores[:, lo:hi]
    # (view, its columns of ``add``): the span, and the end column when it lies outside it
    if end_col == -1:
        parts = [(window, slice(None))]
    else:
        parts = [
            (window, slice(1, None) if end_col == 0 else slice(0, -1)),
            (scores[:, end : end + 1], slice(end_col, end_col + 1)),
        ]
    for view, cols in parts:
        view.add_(add[:, cols])
    # Rows left without a finite allowed score (stuck; or NaN from +inf/NaN inputs): redo them
    # exactly. On CPU only when needed (one host read); on accelerators always, to avoid a sync.
    best = window.amax(1) if end_col == -1 else torch.maximum(window.amax(1), scores[:, end])
    if scores.device.type != "cpu" or not best.min().item() > float("-inf"):
        inf = float("inf")
        allowed = add.isfinite()
        for view, cols in parts:
            view.masked_fill_(~allowed[:, cols], -inf).nan_to_num_(
                nan=-inf, posinf=inf, neginf=-inf
            )
        best = torch.stack([view.amax(1) for view, _ in parts], 1).amax(1)
        stuck = best.isneginf()[:, None]
        for view, cols in parts:
            view.masked_fill_(stuck & allowed[:, cols], 0.0)
    # Everything else: -inf, in at most three contiguous fills around the span and end column.
    a, b = (lo, hi) if end_col == -1 else (min(lo, end), max(hi, end + 1))
    scores[:, :a].fill_(float("-inf"))
    scores[:, b:].fill_(float("-inf"))
    gap = (end + 1, lo) if end < lo else (hi, end)
    if end_col != -1 and gap[1] > gap[0]:
        scores[:, gap[0] : gap[1]].fill_(float("-inf"))
    return scores
