"""Constrained beam search over SID levels, driven through a vLLM engine.

vLLM's own ``LLM.beam_search`` skips per-request logits processors, so the search is written
here, one trie level per engine call: every live beam is a request whose prompt is the user's
prompt followed by the beam's item tokens so far (prefix caching makes that prompt nearly free),
asking for one token with ``width`` logprobs. The trie processor masks the distribution and
writes raw log-probabilities (see ``llmrec.constrain.vllm``), so with
``logprobs_mode="processed_logits"`` the returned top tokens are the best *allowed* continuations
with HF's scores. The bookkeeping (``expand``) is a pure function shared by the synchronous
driver (``LLM``: evaluation, tests) and the asynchronous one (``AsyncLLM``: the HTTP server).

Same rule as ``HFRecommender.score_beam`` (HF beam search, ``length_penalty=0``): keep the
``width`` best unfinished prefixes by summed log-probability at every level; an item is finished
when its end token is chosen, with the end token's log-probability included in its score.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import constraint_args

_request_ids = itertools.count()


@dataclass
class Search:
    """One user's beam search: live prefixes and finished items."""

    prompt: list[int]
    width: int
    exclude: list[int] = field(default_factory=list)
    running: list[tuple[tuple[int, ...], float]] = field(default_factory=lambda: [((), 0.0)])
    finished: list[tuple[tuple[int, ...], float]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """No live prefix is left."""
        return not self.running


def expand(
    search: Search, candidates: Sequence[Sequence[tuple[int, float]]], end_token_id: int
) -> None:
    """Advance ``search`` by one level given each running beam's (token, log-prob) candidates."""
    pool = []
    for (tokens, score), cands in zip(search.running, candidates, strict=True):
        pool += [(tokens + (tok,), score + lp) for tok, lp in cands if math.isfinite(lp)]
    # Stable sort on the score alone: ties keep beam-then-token order, as HF's topk mostly does.
    pool.sort(key=lambda c: -c[1])
    running: list[tuple[tuple[int, ...], float]] = []
    for tokens, score in pool:
        if tokens[-1] == end_token_id:
            search.finished.append((tokens, score))
        elif len(running) < search.width:
            running.append((tokens, score))
    search.running = running


def ranked(search: Search, trie: ItemTrie) -> list[tuple[int, float]]:
    """Finished items (trie indices), best first, at most ``width`` of them."""
    best = sorted(search.finished, key=lambda c: -c[1])[: search.width]
    index = item_index(trie)
    return [(index[tokens], score) for tokens, score in best if tokens in index]


@functools.cache
def item_index(trie: ItemTrie) -> dict[tuple[int, ...], int]:
    """Item token sequence (end token included) → item index, built once per trie."""
    return {
        tuple(t for t in row if t >= 0): i for i, row in enumerate(trie.item_sequences().tolist())
    }


def step_params(search: Search, prefix_len: int, trie_path: str) -> Any:
    """SamplingParams of one beam's next-token request."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=search.width,
        detokenize=False,
        extra_args=constraint_args(trie_path, prefix_len, search.exclude),
    )


def _candidates(output: Any) -> list[tuple[int, float]]:
    """(token, log-prob) pairs of a one-token completion's returned logprobs."""
    logprobs = output.outputs[0].logprobs
    if not logprobs:
        return []
    return [(int(tok), float(lp.logprob)) for tok, lp in logprobs[0].items()]


def beam_search(
    llm: Any, searches: list[Search], trie: ItemTrie, trie_path: str, lora_request: Any = None
) -> list[list[tuple[int, float]]]:
    """Run every user's search to the end with a synchronous ``vllm.LLM``; per user ranked items.

    All users' live beams of one level go to the engine as one batch. ``lora_request`` is one
    adapter for all, or a list with one per search (None: no adapter), mixed in that batch.
    """
    from vllm.inputs import TokensPrompt

    check_engine(llm.llm_engine.model_config, max(s.width for s in searches))
    per_search = isinstance(lora_request, list | tuple)
    loras = dict(zip(map(id, searches), lora_request, strict=True)) if per_search else {}
    for _ in range(trie.depth + 1):
        live = [s for s in searches if not s.done]
        if not live:
            break
        prompts, params, owners = [], [], []
        for s in live:
            for tokens, _score in s.running:
                prompts.append(TokensPrompt(prompt_token_ids=s.prompt + list(tokens)))
                params.append(step_params(s, len(tokens), trie_path))
                owners.append(s)
        request = [loras[id(s)] for s in owners] if per_search else lora_request
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=request)
        by_search: dict[int, list[list[tuple[int, float]]]] = {}
        for s, out in zip(owners, outputs, strict=True):
            by_search.setdefault(id(s), []).append(_candidates(out))
        for s in live:
            expand(s, by_search[id(s)], trie.end_token_id)
    return [ranked(s, trie) for s in searches]


async def beam_search_async(
    engine: Any, search: Search, trie: ItemTrie, trie_path: str, lora_request: Any = None
) -> list[tuple[int, float]]:
    """One user's search on a ``vllm.v1.engine.async_llm.AsyncLLM``; concurrent calls share
    the engine's batches."""
    from vllm.inputs import TokensPrompt

    async def one(tokens: tuple[int, ...]) -> list[tuple[int, float]]:
        prompt = TokensPrompt(prompt_token_ids=search.prompt + list(tokens))
        params = step_params(search, len(tokens), trie_path)
        final = None
        async for out in engine.generate(
            prompt, params, f"beam-{next(_request_ids)}", lora_request=lora_request
        ):
            final = out
        return _candidates(final) if final is not None else []

    for _ in range(trie.depth + 1):
        if search.done:
            break
        cands = await asyncio.gather(*(one(tokens) for tokens, _ in search.running))
        expand(search, cands, trie.end_token_id)
    return ranked(search, trie)


async def greedy_async(
    engine: Any,
    prompt: list[int],
    trie: ItemTrie,
    trie_path: str,
    exclude: list[int],
    lora_request: Any = None,
) -> list[tuple[int, float]]:
    """Width-1 search as one request decoding the whole item (no prompt re-fed per level).

    Same result as a beam of one: the argmax allowed token at every level, scored by the
    sum of their raw log-probabilities (the processed logits the engine returns).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=trie.depth,
        temperature=0.0,
        logprobs=0,
        detokenize=False,
        stop_token_ids=[trie.end_token_id],
        extra_args=constraint_args(trie_path, 0, exclude),
    )
    final = None
    async for out in engine.generate(
        TokensPrompt(prompt_token_ids=prompt),
        params,
        f"greedy-{next(_request_ids)}",
        lora_request=lora_request,
    ):
        final = out
    if final is None:
        return []
    completion = final.outputs[0]
    tokens = tuple(completion.token_ids)
    score = sum(
        step[tok].logprob for step, tok in zip(completion.logprobs or [], tokens, strict=False)
    )
    index = item_index(trie)
    return [(index[tokens], float(score))] if tokens in index else []


def check_engine(model_config: Any, width: int) -> None:
    """Raise unless the engine returns processed logits and enough of them for ``width``."""
    mode = getattr(model_config, "logprobs_mode", None)
    if mode != "processed_logits":
        raise ValueError(
            f"the engine's logprobs_mode is {mode!r}; constrained beam search needs "
            "'processed_logits' (the constrained raw log-probabilities)"
        )
    limit = getattr(model_config, "max_logprobs", 20)
    if limit != -1 and width > limit:
        raise ValueError(
            f"beam width {width} exceeds the engine's max_logprobs={limit}; build "
            "the engine with a larger max_logprobs"
        )
