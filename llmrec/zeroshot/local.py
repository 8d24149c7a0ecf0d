"""Local backends (HF, vLLM): the prompt's tokens in, titles out through the title trie.

The SID models' decoders are reused as they are: ``HFRecommender`` (constrained beam search,
exact ranking) and ``VLLMRecommender`` (level-by-level beam search on a vLLM engine) rank the
items of any ``ItemTrie`` after any prompt, so they are handed the title trie and a stand-in for
``PromptBuilder`` (``PromptIds``) whose "histories" are already the rendered prompt's token ids.
``ListDecoder`` adds the other way to get K distinct items: one title after another, each
generated after the earlier ones with those excluded — what a chat model writing a list does,
and the mode in which sampling settings apply.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llmrec.constrain.hf import constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.base import Users, pad_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptIds:
    """Just enough of ``PromptBuilder`` for the SID decoders: a history *is* the prompt's ids."""

    tokenizer: Any

    def encode(self, prompt_ids: Sequence[int]) -> list[int]:
        """The ids, as they are."""
        return [int(i) for i in prompt_ids]


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[n, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


@dataclass
class ListDecoder:
    """K distinct items as a list: item j is decoded after items 1..j-1 (each followed by the
    separator) with those banned, under any ``generate`` settings (``generation``).

    Scores are each item's raw log-probability where it was generated; the order is the
    model's own (a sampled list is not sorted by score).
    """

    model: Any
    prompts: PromptIds
    trie: ItemTrie
    generation: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    seed: int = 0
    progress: bool = False

    @functools.cached_property
    def _sequences(self) -> list[list[int]]:
        return [[t for t in row if t >= 0] for row in self.trie.item_sequences().tolist()]

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.trie.item_ids)}

    @torch.inference_mode()
    def recommend(
        self,
        histories: Sequence[Sequence[Any]],
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        users: Users | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Per prompt (its token ids), ``k`` distinct items in the order generated."""
        items: list[list[str]] = []
        scores: list[list[float]] = []
        starts = range(0, len(histories), self.batch_size)
        # Sampling draws from torch's global generator: fork it so a seeded run leaves it alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for start in tqdm(starts, desc="recommend (list)", disable=not self.progress):
                part = histories[start : start + self.batch_size]
                skip = [exclude[start + u] if exclude else () for u in range(len(part))]
                got_items, got_scores = self._batch(part, k, skip)
                items += got_items
                scores += got_scores
        return pad_rows(items, scores, k)

    def _batch(
        self, prompts: Sequence[Sequence[Any]], k: int, exclude: Sequence[Collection[str]]
    ) -> tuple[list[list[str]], list[list[float]]]:
        device = next(self.model.parameters()).device
        pad = self.prompts.tokenizer.pad_token_id
        pad = self.trie.end_token_id if pad is None else pad
        rows = [self.prompts.encode(p) for p in prompts]
        banned_items = [sorted({self._index[i] for i in ex if i in self._index}) for ex in exclude]
        chosen: list[list[int]] = [[] for _ in rows]
        logps: list[list[float]] = [[] for _ in rows]
        open_rows = list(range(len(rows)))
        # One sequence per row: the raw log-probabilities are read from the greedy/sampling path.
        settings = {
            key: value
            for key, value in self.generation.items()
            if key not in ("num_return_sequences", "num_beams")
        }
        for _ in range(min(k, len(self.trie.item_ids))):
            if not open_rows:
                break
            ids, mask = _left_pad([rows[u] for u in open_rows], pad, device)
            bans = [banned_items[u] + chosen[u] for u in open_rows]
            banned = self.trie.banned_nodes(bans).to(device)
            kwargs = constrained_generate_kwargs(
                self.model,
                self.trie,
                ids.shape[1],
                banned,
                **{
                    **settings,
                    "num_beams": 1,
                    "num_return_sequences": 1,
                    "output_logits": True,
                    "return_dict_in_generate": True,
                },
            )
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            generated = out.sequences[:, ids.shape[1] :]
            found = self.trie.items_of(generated)
            logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1)
            steps = min(logp.shape[1], generated.shape[1])
            picked = logp[:, :steps].gather(2, generated[:, :steps, None]).squeeze(2)
            after = torch.arange(steps, device=picked.device)[None, :] >= self.trie.depth
            totals = picked.masked_fill(after, 0).sum(1).tolist()
            still_open = []
            for row, (u, item) in enumerate(zip(open_rows, found, strict=True)):
                index = None if item is None else self._index[item]
                # Every item banned: the constraint fell back to a banned one; the list is done.
                if index is None or index in bans[row]:
                    continue
                chosen[u].append(index)
                logps[u].append(float(totals[row]))
                rows[u] = rows[u] + self._sequences[index]
                still_open.append(u)
            open_rows = still_open
        names = self.trie.item_ids
        return [[names[i] for i in c] for c in chosen], logps


@dataclass
class CandidateScorer:
    """Exact ranking of a short candidate list: a trie of the candidates alone, and every
    candidate title's log-probability (``HFRecommender``'s exact mode: the prompt once, then
    the few trie nodes as one tree-attention pass) — far cheaper than a beam search whose
    every beam re-reads the prompt."""

    model: Any
    tokenizer: Any
    trie: ItemTrie  # the whole catalog's title trie

    @functools.cached_property
    def _rows(self) -> tuple[np.ndarray, dict[str, int]]:
        sequences = self.trie.item_sequences().cpu().numpy()
        return sequences, {item: i for i, item in enumerate(self.trie.item_ids)}

    def rank(self, prompt_ids: Sequence[int], candidates: Sequence[str], k: int) -> list[Any]:
        """The ``k`` best candidates with their log-probabilities, best first."""
        from llmrec.recommend.hf import HFRecommender

        if not candidates:
            return []
        sequences, index = self._rows
        rows = [index[c] for c in candidates]
        ids = [self.trie.item_ids[r] for r in rows]
        chosen = sequences[rows]
        # Only as many columns as the longest candidate: an all-padding column has no nodes.
        chosen = chosen[:, : int((chosen >= 0).sum(1).max())]
        sub = ItemTrie.from_sequences(chosen, ids, self.trie.end_token_id)
        prompts: Any = PromptIds(self.tokenizer)
        ranker = HFRecommender(self.model, prompts, sub, mode="exact", batch_size=1)
        history: Any = tuple(prompt_ids)  # PromptIds reads a "history" as the prompt ids
        items, scores = ranker.recommend([history], k)
        return [(i, float(s)) for i, s in zip(items[0], scores[0], strict=True) if i]


def context_length(model: Any) -> int | None:
    """How many positions a HF model or a vLLM engine takes, if it says."""
    engine = getattr(model, "llm_engine", None)
    if engine is not None:
        return int(engine.model_config.max_model_len)
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None
