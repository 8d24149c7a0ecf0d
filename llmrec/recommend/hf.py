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
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from llmrec.constrain.hf import constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.base import pad_rows
from llmrec.recommend.prompting import PromptBuilder

logger = logging.getLogger(__name__)

# HF beam search starts all beams but the first at -1e9; no real log-probability gets near it.
_HF_PLACEHOLDER = -1e8


@dataclass
class HFRecommender:
    """A causal LM + tokenizer + trie + prompt builder, behind the ``Recommender`` protocol."""

    model: Any
    prompts: PromptBuilder
    trie: ItemTrie
    mode: Literal["beam", "exact"] = "beam"
    num_beams: int = 20
    batch_size: int = 8
    exact_rows: int = 1024  # trie nodes scored per forward pass in exact mode
    progress: bool = False

    @classmethod
    def from_run(cls, run: Any, model: Any, tokenizer: Any | None = None,
                 **kwargs: Any) -> HFRecommender:  # fmt: skip
        """Prompts, SID map and trie of a run's instruct stage, around ``model``."""
        from llmrec.indexing.sid_map import SemanticIdMap

        prompts = PromptBuilder.from_run(run, tokenizer)
        sid_map = SemanticIdMap.load(f"{run}/sids/sid_map.json")
        trie = ItemTrie.from_sid_map(sid_map, prompts.tokenizer, prompts.end_token_id)
        return cls(model, prompts, trie, **kwargs)

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
    def score_beam(self, histories: Sequence[Sequence[str]], width: int,
                   exclude: Sequence[Collection[str]] | None = None
                   ) -> list[list[tuple[str, float]]]:  # fmt: skip
        """Constrained beam search: per user, ``width`` (item, log-prob) pairs, best first.

        Excluded items are banned inside the search, so no beam is spent on them.
        """
        ids, mask = self._batch(histories)
        banned = None
        if exclude is not None and any(exclude):
            index = self._item_index
            banned = self.trie.banned_nodes([[index[i] for i in ex if i in index]
                                             for ex in exclude])  # fmt: skip
        kwargs = constrained_generate_kwargs(
            self.model, self.trie, ids.shape[1], banned, num_beams=width,
            num_return_sequences=width,
            do_sample=False, length_penalty=0.0, early_stopping=True, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        if width == 1:  # HF runs greedy search then, which has no sequence scores
            kwargs.update(output_logits=True, num_return_sequences=1)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        generated = out.sequences[:, ids.shape[1] :]
        items = self.trie.items_of(generated)
        if width == 1:
            # Sum of raw log-probs of the chosen tokens up to and including the end token.
            logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1)
            chosen = logp.gather(2, generated[:, : logp.shape[1], None]).squeeze(2)
            steps = torch.arange(chosen.shape[1], device=chosen.device)
            scores = chosen.masked_fill(steps[None, :] >= self.trie.depth, 0).sum(1).tolist()
        else:
            scores = out.sequences_scores.float().cpu().tolist()
        ranked: list[list[tuple[str, float]]] = []
        for u in range(len(histories)):
            seen: set[str] = set()
            row: list[tuple[str, float]] = []
            for r in range(u * width, (u + 1) * width):
                # When fewer items remain than beams, HF's placeholder beams (score -1e9) fill
                # the rest, repeating items: keep each item once, and only real scores.
                item = items[r]
                if item is not None and item not in seen and scores[r] > _HF_PLACEHOLDER:
                    seen.add(item)
                    row.append((item, scores[r]))
            ranked.append(row)
        return ranked

    @torch.inference_mode()
    def score_all(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """Exact log-probability of every catalog item [n_users, n_items]."""
        from transformers import DynamicCache

        trie = self.trie if self.trie.device == self.device else self.trie.to(self.device)
        ids, mask = self._batch(histories)
        # Positions as HF generate computes them for left-padded rows (pads take position 1).
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True)  # fmt: skip
        prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        n_users = ids.shape[0]
        n_nodes = trie.node_item.numel()
        node_score = torch.full((n_users, n_nodes), float("-inf"), device=self.device)
        node_score[:, 0] = 0.0
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        # Level 0 from the prompt alone; deeper levels feed the path tokens after the cache.
        frontier = torch.zeros(1, dtype=torch.long, device=self.device)
        paths = torch.zeros((1, 0), dtype=torch.long, device=self.device)
        for depth in range(trie.depth):
            tokens, children, valid = trie.children(frontier, depth)
            if depth == 0:
                logp = first[:, tokens[0]].unsqueeze(1)  # [users, 1, width]
            else:
                logp = self._continuations(prompt_kv, mask, paths, tokens, DynamicCache)
            child_score = node_score[:, frontier].unsqueeze(-1) + logp
            child_score = torch.where(valid.unsqueeze(0), child_score, float("-inf"))
            flat_children = children[valid]
            node_score[:, flat_children] = child_score[:, valid]
            # The next frontier: open children, with their token paths.
            open_child = trie.node_offset[flat_children + 1] > trie.node_offset[flat_children]
            parent_row = torch.nonzero(valid)[:, 0]
            paths = torch.cat([paths[parent_row], tokens[valid][:, None]], dim=1)[open_child]
            frontier = flat_children[open_child]
            if frontier.numel() == 0:
                break
        leaves = torch.nonzero(trie.node_item >= 0).squeeze(1)
        scores = torch.full((n_users, len(trie.item_ids)), float("-inf"), device=self.device)
        scores[:, trie.node_item[leaves]] = node_score[:, leaves]
        return scores

    def _continuations(self, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],
                       mask: torch.Tensor, paths: torch.Tensor, tokens: torch.Tensor,
                       cache_cls: Any) -> torch.Tensor:  # fmt: skip
        """Log-probs [users, nodes, width] of each node's child tokens after prompt + path."""
        n_users, n_nodes, depth = mask.shape[0], paths.shape[0], paths.shape[1]
        out = torch.empty((n_users, n_nodes, tokens.shape[1]), device=self.device)
        rows_per_user = max(1, self.exact_rows // max(1, n_users))
        for start in range(0, n_nodes, rows_per_user):
            nodes = torch.arange(start, min(n_nodes, start + rows_per_user), device=self.device)
            user = torch.arange(n_users, device=self.device).repeat_interleave(len(nodes))
            node = nodes.repeat(n_users)
            cache = cache_cls(ddp_cache_data=[(k.index_select(0, user), v.index_select(0, user))
                                              for k, v in prompt_kv],
                              config=self.model.config)  # fmt: skip
            step_ids = paths[node]
            attn = torch.cat([mask[user], torch.ones_like(step_ids)], dim=1)
            pos = mask[user].sum(1, keepdim=True) + torch.arange(depth, device=self.device)
            logits = self.model(
                input_ids=step_ids,
                attention_mask=attn,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[node])
            out[user, node] = logp
        return out

    @torch.inference_mode()
    def recommend(self, histories: Sequence[Sequence[str]], k: int,
                  exclude: Sequence[Collection[str]] | None = None
                  ) -> tuple[list[list[str]], np.ndarray]:  # fmt: skip
        """Top-k catalog items per history (see ``Recommender``)."""
        items_out: list[list[str]] = []
        scores_out: list[list[float]] = []
        index = self._item_index
        starts = range(0, len(histories), self.batch_size)
        for start in tqdm(starts, desc=f"recommend ({self.mode})", disable=not self.progress):
            batch = histories[start : start + self.batch_size]
            skip = [exclude[start + i] if exclude else () for i in range(len(batch))]
            if self.mode == "exact":
                scores = self.score_all(batch)
                for u, banned in enumerate(skip):
                    cols = [index[i] for i in banned if i in index]
                    if cols:
                        scores[u, cols] = float("-inf")
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                ranked = [[(self.trie.item_ids[i], v) for i, v in zip(idx, vals, strict=True)
                           if v != float("-inf")]
                          for vals, idx in zip(top.values.tolist(), top.indices.tolist(),
                                               strict=True)]  # fmt: skip
            else:
                width = min(max(self.num_beams, k), len(self.trie.item_ids))
                ranked = [r[:k] for r in self.score_beam(batch, width, skip)]
            items_out += [[i for i, _ in r] for r in ranked]
            scores_out += [[v for _, v in r] for r in ranked]
        return pad_rows(items_out, scores_out, k)

    @functools.cached_property
    def _item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.trie.item_ids)}
