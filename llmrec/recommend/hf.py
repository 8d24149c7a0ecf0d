"""``HFRecommender``: top-k items from an HF causal LM, only ever naming catalog items.

Two modes, one scoring rule (the sum of the model's log-probabilities of an item's tokens,
end token included):

* ``beam``: constrained beam search with ``num_beams`` ≥ k (what peers call "generative
  retrieval"); fast, approximate for narrow beams.
* ``exact``: full ranking. The prompt is encoded once; then the trie is walked level by level,
  each node's continuation scored from the prompt's KV cache, so every item gets its exact score
  (an unbounded beam) at the cost of one token step per trie node. For catalogs small enough.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from llmrec.constrain.hf import constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.base import DEFAULT_BEAMS, Users, beam_width, pad_rows
from llmrec.recommend.prompting import PromptBuilder, RunDecoding

logger = logging.getLogger(__name__)

# HF beam search starts all beams but the first at -1e9; no real log-probability gets near it.
_HF_PLACEHOLDER = -1e8


def _cache_kwargs(model: Any, out: Any) -> dict[str, Any]:
    """The prompt's KV cache as the model's forward takes it: ``cache`` since transformers 5.2x
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    if "cache" in inspect.signature(model.forward).parameters:
        cache = out.get("cache")
        return {"cache": cache if cache is not None else out.past_key_values}
    return {"past_key_values": out.past_key_values}


@dataclass
class HFRecommender:
    """A causal LM + tokenizer + trie + prompt builder, behind the ``Recommender`` protocol."""

    model: Any
    prompts: PromptBuilder
    trie: ItemTrie
    mode: Literal["beam", "exact"] = "beam"
    num_beams: int = DEFAULT_BEAMS
    batch_size: int = 8
    exact_memory_mb: int = 256  # exact mode: logits held per forward pass
    tree_chunk: int = 256  # exact mode: trie nodes per forward pass (whole subtrees)
    progress: bool = False

    @classmethod
    def from_run(
        cls, run: str | Path, model: Any, tokenizer: Any | None = None, **kwargs: Any
    ) -> HFRecommender:
        """Prompts and trie of a run (``RunDecoding``), around ``model``."""
        decoding = RunDecoding.load(run, tokenizer)
        return cls(model, decoding.prompts, decoding.trie, **kwargs)

    def with_beams(self, num_beams: int) -> HFRecommender:
        """This recommender searching with another beam width (same model, prompts, trie)."""
        return self if num_beams == self.num_beams else replace(self, num_beams=num_beams)

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return next(self.model.parameters()).device

    def _batch(self, histories: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask."""
        encoded = [self.prompts.encode(h) for h in histories]
        width = max(len(e) for e in encoded)
        pad = self.prompts.tokenizer.pad_token_id
        pad = self.trie.end_token_id if pad is None else pad
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            mask[row, width - len(e) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def score_beam(
        self,
        histories: Sequence[Sequence[str]],
        width: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Constrained beam search: per user, ``width`` (item, log-prob) pairs, best first.

        Excluded items are banned inside the search, so no beam is spent on them.
        """
        ids, mask = self._batch(histories)
        banned = None
        if exclude is not None and any(exclude):
            index = self._item_index
            banned = self.trie.banned_nodes(
                [[index[i] for i in ex if i in index] for ex in exclude]
            )
        # With one beam HF runs greedy search, which has no sequence scores: keep the raw
        # logits instead (the processor then leaves HF's tensor alone).
        kwargs = constrained_generate_kwargs(
            self.model,
            self.trie,
            ids.shape[1],
            banned,
            num_beams=width,
            num_return_sequences=width,
            output_logits=width == 1,
            do_sample=False,
            length_penalty=0.0,
            # Not True: when a trie leaves fewer continuations than beams, HF fills the beams
            # with placeholders (score -1e9) that can finish first; True would then stop with
            # those counted, before a longer real item (a title trie's items differ in length)
            # is done. "never" stops when no running beam can beat the worst finished one.
            early_stopping="never",
            output_scores=True,
            return_dict_in_generate=True,
        )
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        generated = out.sequences[:, ids.shape[1] :]
        # The trie may live on another device than the model (CPU trie, CUDA model).
        items = self.trie.items_of(generated.to(self.trie.device))
        if width == 1:
            # Sum of raw log-probs of the chosen tokens up to and including the end token.
            logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1)
            chosen = logp.gather(2, generated[:, : logp.shape[1], None]).squeeze(2)
            steps = torch.arange(chosen.shape[1], device=chosen.device)
            scores = chosen.masked_fill(steps[None, :] >= self.trie.depth, 0).sum(1).tolist()
        else:
            scores = out.sequences_scores.float().cpu().tolist()
        per_user = len(items) // len(histories)  # fewer than width for a tiny catalog
        ranked: list[list[tuple[str, float]]] = []
        for u in range(len(histories)):
            seen: set[str] = set()
            row: list[tuple[str, float]] = []
            for r in range(u * per_user, (u + 1) * per_user):
                # When fewer items remain than beams, HF's placeholder beams (score -1e9) fill
                # the rest, repeating items: keep each item once, and only real scores.
                item = items[r]
                if item is not None and item not in seen and scores[r] > _HF_PLACEHOLDER:
                    seen.add(item)
                    row.append((item, scores[r]))
            ranked.append(row)
        return ranked

    @functools.cached_property
    def _tree(self) -> dict[str, torch.Tensor]:
        """The trie's open nodes laid out for tree attention (computed once)."""
        trie = self.trie if self.trie.device == self.device else self.trie.to(self.device)
        n_nodes = trie.node_item.numel()
        parent = torch.zeros(n_nodes, dtype=torch.long, device=self.device)
        parent[trie.edge_child] = trie.edge_key // trie.key_base
        token = torch.zeros(n_nodes, dtype=torch.long, device=self.device)
        token[trie.edge_child] = trie.edge_token
        depth = torch.zeros(n_nodes, dtype=torch.long, device=self.device)
        for _ in range(trie.depth):  # nodes are numbered by depth: parents settle first
            depth[trie.edge_child] = depth[parent[trie.edge_child]] + 1
        has_children = trie.node_offset[1:] > trie.node_offset[:-1]
        open_nodes = torch.nonzero(has_children & (depth > 0)).squeeze(1)
        slot = torch.full((n_nodes,), -1, dtype=torch.long, device=self.device)
        slot[open_nodes] = torch.arange(len(open_nodes), device=self.device)
        # ancestor[i, j]: open node j lies on the path to open node i (itself included).
        ancestor = torch.zeros(
            (len(open_nodes), len(open_nodes)), dtype=torch.bool, device=self.device
        )
        rows = torch.arange(len(open_nodes), device=self.device)
        node = open_nodes.clone()
        for _ in range(trie.depth):
            inside = node > 0
            ancestor[rows[inside], slot[node[inside]]] = True
            node = torch.where(inside, parent[node], node)
        # Chunks of whole subtrees under the root's children: a node attends only within its
        # subtree, so each chunk is one forward pass whose attention costs chunk × (prompt +
        # chunk) instead of the whole tree's tree × (prompt + tree).
        top = open_nodes.clone()
        for _ in range(trie.depth):
            top = torch.where(depth[top] > 1, parent[top], top)
        order = torch.argsort(top, stable=True)
        subtree_sizes = torch.unique_consecutive(top[order], return_counts=True)[1].tolist()
        chunks: list[torch.Tensor] = []
        start = end = 0
        for size in subtree_sizes:
            if end > start and end - start + size > self.tree_chunk:
                chunks.append(order[start:end])
                start = end
            end += size
        if end > start:
            chunks.append(order[start:end])
        return {
            "nodes": open_nodes,
            "token": token[open_nodes],
            "depth": depth[open_nodes],
            "ancestor": ancestor,
            "node_depth": depth,
            "chunks": chunks,  # type: ignore[dict-item]
        }

    @torch.inference_mode()
    def score_all(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """Exact log-probability of every catalog item [n_users, n_items].

        Tree attention: after the prompt, every inner node of the trie is fed as one token that
        attends to the prompt (its KV cache, computed once) and to its own ancestors only, so a
        forward pass yields the next-token distribution after every prefix it holds; the tree
        goes through in chunks of whole subtrees (``tree_chunk`` nodes). Users are split into
        passes whose logits ([users, inner nodes, vocabulary]) fit in ``exact_memory_mb``.
        """
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        per_user = max(1, len(self._tree["nodes"])) * vocab * 4
        step = max(1, (self.exact_memory_mb << 20) // per_user)
        parts = [self._score_all(histories[i : i + step]) for i in range(0, len(histories), step)]
        return torch.cat(parts)

    def _score_all(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        trie = self.trie if self.trie.device == self.device else self.trie.to(self.device)
        tree = self._tree
        ids, mask = self._batch(histories)
        n_users = ids.shape[0]
        # Positions as HF generate computes them for left-padded rows (pads take position 1).
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        root_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        n_open = len(tree["nodes"])
        node_logp = None
        if n_open:
            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            node_logp = torch.empty((n_users, n_open, vocab), device=self.device)
            cache = _cache_kwargs(self.model, out)
            for chunk in tree["chunks"]:
                allowed = torch.cat(
                    [
                        mask.bool()[:, None, :].expand(n_users, len(chunk), -1),
                        tree["ancestor"][chunk][:, chunk][None].expand(n_users, -1, -1),
                    ],
                    dim=2,
                )
                if getattr(self.model.config, "_attn_implementation", "sdpa") == "sdpa":
                    additive = allowed[:, None]  # SDPA takes a boolean mask: 4x less memory
                else:
                    dtype = next(self.model.parameters()).dtype
                    additive = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
                    additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
                tokens = tree["token"][chunk][None].expand(n_users, -1)
                pos = mask.sum(1, keepdim=True) + tree["depth"][chunk][None] - 1
                logits = self.model(
                    input_ids=tokens,
                    attention_mask=additive,
                    position_ids=pos,
                    use_cache=True,
                    **cache,
                ).logits
                node_logp[:, chunk] = torch.log_softmax(logits.float(), dim=-1)
                # Back to the prompt alone (negative: remove that many tokens; any version).
                next(iter(cache.values())).crop(-len(chunk))
        n_nodes = trie.node_item.numel()
        score = torch.full((n_users, n_nodes), float("-inf"), device=self.device)
        score[:, 0] = 0.0
        slot = torch.full((n_nodes,), -1, dtype=torch.long, device=self.device)
        slot[tree["nodes"]] = torch.arange(n_open, device=self.device)
        for d in range(trie.depth):
            parents = torch.nonzero(
                (tree["node_depth"] == d) & (trie.node_offset[1:] > trie.node_offset[:-1])
            ).squeeze(1)
            tokens_, children, valid = trie.children(parents, d)
            if d == 0:
                logp = root_logp[:, tokens_[0]][:, None, :]
            else:
                assert node_logp is not None
                logp = node_logp[:, slot[parents]].gather(2, tokens_[None].expand(n_users, -1, -1))
            child = score[:, parents, None] + logp
            score[:, children[valid]] = child[:, valid]
        leaves = torch.nonzero(trie.node_item >= 0).squeeze(1)
        scores = torch.full((n_users, len(trie.item_ids)), float("-inf"), device=self.device)
        scores[:, trie.node_item[leaves]] = score[:, leaves]
        return scores

    @torch.inference_mode()
    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k catalog items per history (see ``Recommender``)."""
        items_out: list[list[str]] = []
        scores_out: list[list[float]] = []
        index = self._item_index
        starts = range(0, len(histories), self.batch_size)
        for start in tqdm(starts, desc=f"recommend ({self.mode})", disable=not self.progress):
            batch = histories[start : start + self.batch_size]
            skip = [exclude[start + i] if exclude else () for i in range(len(batch))]
            if self.mode == "exact":
                scores = self._memo_scores(batch)
                for u, banned in enumerate(skip):
                    cols = [index[i] for i in banned if i in index]
                    if cols:
                        scores[u, cols] = float("-inf")
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                ranked = [
                    [
                        (self.trie.item_ids[i], v)
                        for i, v in zip(idx, vals, strict=True)
                        if v != float("-inf")
                    ]
                    for vals, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ]
            else:
                width = beam_width(self.num_beams, k, len(self.trie.item_ids))
                ranked = [r[:k] for r in self.score_beam(batch, width, skip)]
            items_out += [[i for i, _ in r] for r in ranked]
            scores_out += [[v for _, v in r] for r in ranked]
        return pad_rows(items_out, scores_out, k)

    def _memo_scores(self, batch: Sequence[Sequence[str]]) -> torch.Tensor:
        """Exact scores, remembered per history: evaluating the same users again (e.g. with
        seen items excluded) costs nothing. The memo holds the last 4,096 histories."""
        memo: dict[tuple[str, ...], torch.Tensor] = self.__dict__.setdefault("_memo", {})
        keys = [tuple(h) for h in batch]
        missing = [k for k in dict.fromkeys(keys) if k not in memo]
        if missing:
            for key, row in zip(missing, self.score_all(missing), strict=True):
                memo[key] = row
            while len(memo) > 4096:
                memo.pop(next(iter(memo)))
        return torch.stack([memo[k] for k in keys]).clone()

    @functools.cached_property
    def _item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.trie.item_ids)}
