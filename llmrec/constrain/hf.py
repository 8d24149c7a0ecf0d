"""Trie constraint for HF ``generate``: greedy, sampling and beam search emit only catalog items.

``TrieLogitsProcessor`` reads each row's generated tokens (everything after the prompt, whose
length is fixed at construction: prompts are left-padded to one length) and masks every token
the trie does not allow to -inf. ``constrained_generate_kwargs`` turns a model's generation
settings into ones that cannot defeat the constraint and says what it changed.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from transformers import LogitsProcessor

from llmrec.constrain.trie import ItemTrie

logger = logging.getLogger(__name__)


class TrieLogitsProcessor(LogitsProcessor):
    """Mask scores to the tokens that continue some catalog item."""

    def __init__(
        self,
        trie: ItemTrie,
        prompt_length: int,
        banned: torch.Tensor | None = None,
        rows_per_prompt: int = 1,
        inplace: bool = False,
    ) -> None:
        """``banned`` [n_prompts, N] (``ItemTrie.banned_nodes``) excludes items per prompt;
        ``rows_per_prompt`` is how many score rows each prompt has (beams or samples).

        ``inplace`` masks the scores HF passes in instead of a fresh copy, which saves an
        allocation of rows × vocabulary per step. Safe unless the caller keeps that tensor:
        HF's greedy and sampling loops do when ``output_logits`` is on (beam search never does).
        """
        self.inplace = inplace
        self.trie = trie
        self.prompt_length = prompt_length
        self.banned = banned
        self.rows_per_prompt = rows_per_prompt
        self._on: dict[torch.device, ItemTrie] = {trie.device: trie}

    def _trie_on(self, device: torch.device) -> ItemTrie:
        if device not in self._on:
            self._on[device] = self.trie.to(device)
        return self._on[device]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Constrain one decoding step (rows = batch × beams)."""
        generated = input_ids[:, self.prompt_length :]
        banned = rows = None
        if self.banned is not None:
            banned = self.banned.to(scores.device)
            # HF lays rows out prompt-major: rows_per_prompt consecutive rows per prompt.
            rows = torch.arange(scores.shape[0], device=scores.device) // self.rows_per_prompt
        trie = self._trie_on(scores.device)
        return trie.constrain(scores, generated, banned, rows, inplace=self.inplace)  # type: ignore[return-value]


# Generation settings that act *before* custom logits processors in HF and could otherwise
# leave no allowed token, or stop an item half-way.
_RISKY = (
    "min_new_tokens",
    "min_length",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "no_repeat_ngram_size",
    "forced_eos_token_id",
    "forced_bos_token_id",
    "sequence_bias",
    "exponential_decay_length_penalty",
)


def constrained_generate_kwargs(
    model: Any,
    trie: ItemTrie,
    prompt_length: int,
    banned: torch.Tensor | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """``generate`` keyword arguments that decode exactly one item under the trie.

    Lengths are set to the trie's depth, the end token becomes the stop token, and settings
    that would run before the constraint and could strip every valid token are switched off
    with a warning. Sampling settings (temperature, top-k, top-p) are kept: HF applies them after
    custom processors, and the constraint keeps a finite score on every row anyway.
    """
    config = getattr(model, "generation_config", None)
    changed = []
    kwargs: dict[str, Any] = {}
    for name in _RISKY:
        value = overrides.pop(name, getattr(config, name, None))
        if value not in (None, 0, [], {}):
            changed.append(f"{name}={value!r}")
        kwargs[name] = None
    if changed:
        warnings.warn(
            "constrained decoding ignores " + ", ".join(changed) + " (they could "
            "remove every valid item token)",
            stacklevel=2,
        )
    n_items = len(trie.item_ids)
    if (overrides.get("num_return_sequences") or 1) > n_items:
        # Beam search would pad the answer with sequences that name no item.
        warnings.warn(
            f"num_return_sequences={overrides['num_return_sequences']} exceeds the "
            f"{n_items} catalog items; returning {n_items}",
            stacklevel=2,
        )
        overrides["num_return_sequences"] = n_items
    # HF keeps the tensor handed to the processors only for ``output_logits``.
    keeps_logits = bool(overrides.get("output_logits", getattr(config, "output_logits", False)))
    kwargs.update(
        max_new_tokens=trie.depth,
        eos_token_id=trie.end_token_id,
        logits_processor=[
            TrieLogitsProcessor(
                trie,
                prompt_length,
                banned,
                rows_per_prompt=max(
                    overrides.get("num_beams", 1) or 1,
                    overrides.get("num_return_sequences", 1) or 1,
                ),
                inplace=not keeps_logits,
            )
        ],
        renormalize_logits=False,
    )
    pad = getattr(config, "pad_token_id", None)
    kwargs["pad_token_id"] = pad if pad is not None else trie.end_token_id
    kwargs.update(overrides)
    return kwargs
