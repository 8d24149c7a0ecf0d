"""Constrained rollouts for GRPO (TRL's ``rollout_func``) and hard negatives for DPO: every
completion names a catalog item, through the one ``ItemTrie``.

**Contract with TRL 1.16** (``GRPOTrainer(rollout_func=...)``): ``Rollouts(prompts, trainer)``
gets this process's prompts — each repeated ``num_generations`` (G) times in a row, a group
possibly split between processes (process p holds rows ``p·n … p·n + n − 1`` of the global
batch, which is how TRL groups the gathered rewards) — and returns ``prompt_ids``,
``completion_ids`` (item tokens, end token included), ``logprobs``, and extra columns that reach
the reward functions: ``item``, ``rank``, ``target_rank``, ``logp``.

**Modes.** ``beam``: one constrained beam search of width G per prompt; the group's rows are its
G distinct items in beam order (``rank`` 0 = best; MiniOneRec/ReRe). ``sample``: each row is
one constrained sample at the trainer's temperature/top-k/top-p (on-policy; duplicates are
allowed and counted in ``rollouts/distinct``); ``rank`` orders the group's distinct items by
log-probability.

**Which distribution the loss sees.** TRL computes the loss's log-probabilities with its own
forward pass over the completion: the policy's *full* softmax over the vocabulary, no logits
processor. We keep that: its gradient also moves mass from the tokens the trie forbids onto
catalog items, and the constrained (renormalised) policy differs from it only by the per-step
valid mass Z (logged as ``rollouts/valid_mass``: ≈ 1 for a model trained on SIDs). Beam scores
and ``logp`` use the same full softmax (HF beam search takes log-softmax before the processors).
Hence the importance-sampling correction: ``beam`` is not sampling at all (a deterministic set;
no ratio exists), so ``vllm_importance_sampling_correction`` is forced off; ``sample`` returns
the full-softmax log-probabilities of the drawn tokens; on HF, TRL ignores ``logprobs`` (the
sampler and the trainer are the same model) — on-policy up to the constraint. On a vLLM server
(``vllm_rollouts.py``) the engine's log-probabilities are the renormalised constrained ones
(TRL's ``processed_logprobs``), so the ratio corrects the engine/trainer mismatch it exists for,
times the valid mass Z ≈ 1: keep it on there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from llmrec.constrain.hf import constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.prompting import RunDecoding
from llmrec.train.policy import Window

logger = logging.getLogger(__name__)


def item_tokens(decoding: RunDecoding) -> dict[str, list[int]]:
    """Item id → its token sequence (SID tokens and the end token), from the trie itself."""
    seqs = decoding.trie.item_sequences().tolist()
    return {
        item: [t for t in seq if t >= 0]
        for item, seq in zip(decoding.trie.item_ids, seqs, strict=True)
    }


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask [n, width]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@dataclass
class Rollouts:
    """TRL's ``rollout_func`` for GRPO over a fixed set of windows (prompt text → window)."""

    decoding: RunDecoding
    windows: Mapping[str, Window]
    mode: Literal["beam", "sample"]
    num_generations: int
    batch_size: int = 16
    # Where the trie is saved for a vLLM server to load (sample mode with use_vllm only).
    trie_path: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "llmrec-trie.pt")
    _tokens: dict[str, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tokens = item_tokens(self.decoding)
        n_items = len(self.decoding.trie.item_ids)
        if self.mode == "beam" and self.num_generations > n_items:
            raise ValueError(f"beam rollouts need G ≤ {n_items} items, got {self.num_generations}")

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, list[Any]]:
        """Completions for this process's prompts (see the module docstring)."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        first_row = trainer.accelerator.process_index * len(prompts)
        was_training = model.training
        model.eval()
        try:
            if self.mode == "beam":
                out = self.beam(model, prompts, first_row)
            else:
                out = self.sample(model, prompts, trainer)
        finally:
            model.train(was_training)
        items = out["item"]
        invalid = sum(i is None for i in items) / max(len(items), 1)
        trainer._log_metric("rollouts/invalid", invalid)  # TRL's hook for extra scalars
        groups = self._groups(prompts, first_row)
        distinct = [len({items[r] for r in rows}) / len(rows) for rows in groups.values()]
        trainer._log_metric("rollouts/distinct", sum(distinct) / len(distinct))
        if "valid_mass" in out:
            trainer._log_metric("rollouts/valid_mass", out.pop("valid_mass"))
        return out

    def _groups(self, prompts: Sequence[str], first_row: int) -> dict[int, list[int]]:
        """Global group index → this process's rows in it (checked: one prompt per group)."""
        groups: dict[int, list[int]] = {}
        for j in range(len(prompts)):
            groups.setdefault((first_row + j) // self.num_generations, []).append(j)
        for rows in groups.values():
            if len({prompts[r] for r in rows}) != 1:
                raise RuntimeError(
                    "rollout rows of one group carry different prompts: TRL's batch layout is "
                    "not the one this rollout function was written for"
                )
        return groups

    def beam(self, model: Any, prompts: Sequence[str], first_row: int) -> dict[str, list[Any]]:
        """One constrained beam search of width G per group; each row takes its beam rank."""
        groups = self._groups(prompts, first_row)
        windows = [self.windows[prompts[rows[0]]] for rows in groups.values()]
        rec = HFRecommender(model, self.decoding.prompts, self.decoding.trie, mode="beam")
        ranked: list[list[tuple[str, float]]] = []
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            ranked += rec.score_beam([w.history for w in chunk], self.num_generations)
        n = len(prompts)
        out: dict[str, list[Any]] = {
            k: [None] * n
            for k in ("prompt_ids", "completion_ids", "item", "rank", "target_rank", "logp")
        }
        for (group, rows), window, beams in zip(groups.items(), windows, ranked, strict=True):
            prompt_ids = self.decoding.prompts.encode(window.history)
            beam_items = [item for item, _ in beams]
            target_rank = beam_items.index(window.target) if window.target in beam_items else None
            for j in rows:
                rank = (first_row + j) - group * self.num_generations
                item, logp = beams[rank]
                out["prompt_ids"][j] = prompt_ids
                out["completion_ids"][j] = self._tokens[item]
                out["item"][j], out["rank"][j], out["logp"][j] = item, rank, logp
                out["target_rank"][j] = target_rank
        out["logprobs"] = None  # type: ignore[assignment]  # no sampling: nothing to correct
        return out

    @torch.inference_mode()
    def sample(self, model: Any, prompts: Sequence[str], trainer: Any) -> dict[str, Any]:
        """One constrained sample per row, with its token log-probabilities: the policy's full
        softmax here, the server's on vLLM (``vllm_rollouts.py``)."""
        encoded = {p: self.decoding.prompts.encode(self.windows[p].history) for p in set(prompts)}
        rows = [encoded[p] for p in prompts]
        extra: dict[str, Any] = {}
        if getattr(trainer, "use_vllm", False):
            from llmrec.train.vllm_rollouts import sample_on_server

            completion_ids, logprobs = sample_on_server(
                trainer, rows, self.decoding.trie, self.trie_path
            )
        else:
            completion_ids, logprobs, mass = self._hf_samples(model, rows, trainer.args)
            extra["valid_mass"] = mass
        trie = self.decoding.trie
        items = trie.items_of(torch.tensor(_pad_right(completion_ids, trie.end_token_id)))
        logp = [sum(lp) for lp in logprobs]
        ranks, target_ranks = self._sample_ranks(prompts, items, logp)
        return {
            "prompt_ids": rows,
            "completion_ids": completion_ids,
            "logprobs": logprobs,
            "item": items,
            "rank": ranks,
            "target_rank": target_ranks,
            "logp": logp,
            **extra,
        }

    def _hf_samples(
        self, model: Any, rows: Sequence[list[int]], args: Any
    ) -> tuple[list[list[int]], list[list[float]], float]:
        """Constrained samples with transformers: completions, full-softmax log-probabilities
        of their tokens, and the mean valid mass."""
        trie = self.decoding.trie
        temperature = float(getattr(args, "temperature", 1.0) or 1.0)
        settings = {
            "temperature": temperature,
            "top_k": getattr(args, "top_k", 0) or 0,
            "top_p": getattr(args, "top_p", 1.0),
            "min_p": getattr(args, "min_p", None),
            "repetition_penalty": getattr(args, "repetition_penalty", 1.0),
            **(getattr(args, "generation_kwargs", None) or {}),
        }
        pad = self.decoding.prompts.tokenizer.pad_token_id
        pad = trie.end_token_id if pad is None else pad
        device = next(model.parameters()).device
        per_call = self.batch_size * self.num_generations
        completion_ids: list[list[int]] = []
        logprobs: list[list[float]] = []
        masses: list[float] = []
        for start in range(0, len(rows), per_call):
            ids, mask = left_pad(rows[start : start + per_call], pad)
            kwargs = constrained_generate_kwargs(
                model,
                trie,
                ids.shape[1],
                **settings,
                do_sample=True,
                num_beams=1,
                output_logits=True,
                return_dict_in_generate=True,
            )
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            gen = out.sequences[:, ids.shape[1] :]
            raw = torch.stack(out.logits, 1).float() / temperature  # [rows, steps, V]
            full = torch.log_softmax(raw, -1)
            masses.append(valid_mass(trie, full, gen))
            chosen = full.gather(2, gen[:, : full.shape[1], None]).squeeze(2)
            for row in range(gen.shape[0]):
                tokens = gen[row].tolist()
                end = tokens.index(trie.end_token_id) + 1 if trie.end_token_id in tokens else None
                completion_ids.append(tokens[:end])
                logprobs.append(chosen[row, : len(completion_ids[-1])].tolist())
        return completion_ids, logprobs, sum(masses) / len(masses)

    def _sample_ranks(
        self, prompts: Sequence[str], items: Sequence[str | None], logp: Sequence[float]
    ) -> tuple[list[int], list[int | None]]:
        """Per row: its item's rank among the distinct items of its prompt's rows here (by
        log-probability), and the target's rank there (None if not drawn)."""
        ranks: list[int] = [0] * len(items)
        target_ranks: list[int | None] = [None] * len(items)
        by_prompt: dict[str, list[int]] = {}
        for j, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(j)
        for p, rows in by_prompt.items():
            best: dict[str | None, float] = {}
            for j in rows:
                best[items[j]] = max(best.get(items[j], -float("inf")), logp[j])
            order = {item: r for r, item in enumerate(sorted(best, key=lambda i: -best[i]))}
            target = self.windows[p].target
            for j in rows:
                ranks[j] = order[items[j]]
                target_ranks[j] = order.get(target)
        return ranks, target_ranks


def valid_mass(trie: ItemTrie, logprobs: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean share of the full softmax that the trie allows at each step of each row: how far
    the constrained (renormalised) policy is from the full one (1 = identical)."""
    trie = trie if trie.device == logprobs.device else trie.to(logprobs.device)
    shares = []
    for t in range(logprobs.shape[1]):
        allowed = trie.constrain(torch.zeros_like(logprobs[:, t]), generated[:, :t]).isfinite()
        shares.append(logprobs[:, t].masked_fill(~allowed, -torch.inf).logsumexp(-1).exp())
    return float(torch.stack(shares, 1).mean())


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [list(r) + [pad] * (width - len(r)) for r in rows]


def hard_negatives(
    rec: HFRecommender,
    windows: Sequence[Window],
    k: int,
    exclude_history: bool = False,
    batch_size: int = 16,
) -> list[list[str]]:
    """Per window, the ``k`` items the model ranks highest that are not its target (constrained
    beam search of width ``k`` with the target — and the history, if asked — banned inside the
    search, so no beam is spent on them)."""
    out: list[list[str]] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        banned: list[Collection[str]] = [
            {w.target, *(w.history if exclude_history else ())} for w in chunk
        ]
        ranked = rec.score_beam([w.history for w in chunk], k, banned)
        out += [[item for item, _ in row] for row in ranked]
    return out
