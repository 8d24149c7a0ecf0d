"""Constrained beam search over SID levels, driven through a vLLM engine.

vLLM's own ``LLM.beam_search`` skips per-request logits processors, so the search is written
here. vLLM cannot fork a sequence, so a beam's candidates come from a request whose prompt is
the user's prompt followed by the beam's item tokens so far (prefix caching makes that prompt
nearly free, up to its last, partial cache block). The trie processor masks the distribution and
writes raw log-probabilities (see ``llmrec.constrain.vllm``), so with
``logprobs_mode="processed_logits"`` the returned top tokens are the best *allowed*
continuations with HF's scores. The bookkeeping (``expand``, ``advance``) is pure; the driver is a
synchronous ``LLM`` (evaluation, GRPO, and the HTTP server, which micro-batches requests into
one search).

``beam_search`` sends *rollouts*: a request decodes greedily from its
beam to the item's end and returns the top candidates at every step, so the beam's argmax child
(and that child's) get theirs from a one-token decoding step on the request's KV cache. Only
beams that are not their parent's argmax child need a request of their own; rollouts whose path
leaves the beam are aborted. ``beam_search_levels`` uses vLLM's
own pattern instead: a new one-token request for every live beam at every level.

Requests are kept as cheap as vLLM's own beam search makes them (measured in
``scripts/bench/vllm_beam.py``):

* one ``SamplingParams`` per user and level, shared by its beams and never deep-copied
  (``skip_clone``; vLLM copies it per request otherwise, exclusions included);
* prompts go in as token inputs, past the renderer, straight to ``LLMEngine.add_request``;
* a request asks for only as many log-probabilities as a node can have children
  (``min(width, trie.max_children[depth])``), where vLLM's search asks ``2 × width``.

Same rule as ``HFRecommender.score_beam`` (HF beam search, ``length_penalty=0``): keep the
``width`` best unfinished prefixes by summed log-probability at every level; an item is finished
when its end token is chosen, with the end token's log-probability included in its score.
"""

from __future__ import annotations

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
    # prefix -> its (token, log-prob) candidates, as rollouts bring them (``beam_search``)
    next_tokens: dict[tuple[int, ...], list[tuple[int, float]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def done(self) -> bool:
        """No live prefix is left."""
        return not self.running

    @property
    def depth(self) -> int:
        """Tokens in every live prefix (all beams of a level have the same length)."""
        return len(self.running[0][0]) if self.running else 0


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


@functools.lru_cache(maxsize=8)  # bounded: a server swaps tries, a process must not grow
def item_index(trie: ItemTrie) -> dict[tuple[int, ...], int]:
    """Item token sequence (end token included) → item index, built once per trie."""
    return {
        tuple(t for t in row if t >= 0): i for i, row in enumerate(trie.item_sequences().tolist())
    }


def logprobs_needed(trie: ItemTrie, width: int, depth: int | None = None) -> int:
    """Log-probabilities a beam request asks for at ``depth`` (every depth: the most of them).

    A node has at most ``trie.max_children[depth]`` allowed continuations, so more than that
    many top tokens would only add -inf entries for the engine to rank and send back.
    """
    depths = range(trie.depth) if depth is None else [depth]
    return max(1, max(min(width, trie.max_children[d]) for d in depths if d < trie.depth))


def step_params(
    search: Search, prefix_len: int, trie_path: str, trie: ItemTrie | None = None
) -> Any:
    """SamplingParams of the next-token requests of ``search``'s beams at ``prefix_len``.

    One object serves every beam of the level: vLLM copies it shallowly (``skip_clone``) and
    returns only the final output (``FINAL_ONLY``), as its own beam search does.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    n_logprobs = search.width if trie is None else logprobs_needed(trie, search.width, prefix_len)
    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=n_logprobs,
        detokenize=False,
        skip_clone=True,
        output_kind=RequestOutputKind.FINAL_ONLY,
        extra_args=constraint_args(trie_path, prefix_len, search.exclude),
    )


def _candidates(output: Any) -> list[tuple[int, float]]:
    """(token, log-prob) pairs of a one-token completion's returned logprobs."""
    logprobs = output.outputs[0].logprobs
    if not logprobs:
        return []
    return [(int(tok), float(lp.logprob)) for tok, lp in logprobs[0].items()]


def _beam_requests(
    searches: Sequence[Search], trie: ItemTrie, trie_path: str
) -> list[tuple[Search, list[int], Any]]:
    """(search, prompt ids, params) of every live beam of ``searches``, beam order kept."""
    out = []
    for s in searches:
        params = step_params(s, s.depth, trie_path, trie)
        out += [(s, s.prompt + list(tokens), params) for tokens, _ in s.running]
    return out


def run_requests(engine: Any, requests: Sequence[tuple[list[int], Any]], lora: Any) -> list[Any]:
    """Run one-token requests on an ``LLMEngine`` to completion; outputs in request order.

    The prompts are token inputs handed straight to ``add_request`` (no renderer pass, no
    tokenizer); the engine is stepped until every request is finished.
    """
    from vllm.inputs import tokens_input

    names: dict[str, int] = {}
    try:
        for i, (prompt, params) in enumerate(requests):
            name = f"llmrec-beam-{next(_request_ids)}"
            engine.add_request(name, tokens_input(prompt), params, lora_request=lora)
            names[name] = i
    except Exception:
        if names:
            engine.abort_request(list(names))
        raise
    outputs: list[Any] = [None] * len(requests)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished and out.request_id in names:
                outputs[names[out.request_id]] = out
    return outputs


def beam_search_levels(
    llm: Any, searches: list[Search], trie: ItemTrie, trie_path: str, lora_request: Any = None
) -> list[list[tuple[int, float]]]:
    """``beam_search`` as vLLM's own beam search runs: every live beam a new one-token request
    at every level (all users' beams of a level in one batch). Same results, more requests."""
    if not searches:
        return []
    check_engine(llm.llm_engine.model_config, max(s.width for s in searches), trie)
    for _ in range(trie.depth + 1):
        live = [s for s in searches if not s.done]
        if not live:
            break
        requests = _beam_requests(live, trie, trie_path)
        outputs = run_requests(llm.llm_engine, [(p, sp) for _, p, sp in requests], lora_request)
        by_search: dict[int, list[list[tuple[int, float]]]] = {}
        for (s, _, _), out in zip(requests, outputs, strict=True):
            by_search.setdefault(id(s), []).append(_candidates(out) if out else [])
        for s in live:
            expand(s, by_search[id(s)], trie.end_token_id)
    return [ranked(s, trie) for s in searches]


@dataclass
class _Rollout:
    """A request decoding greedily from a beam: each output brings the candidates of the next
    prefix on its path (its own argmax child, then that child's, ...)."""

    search: Search
    name: str
    next_prefix: tuple[int, ...]

    def record(self, output: Any) -> None:
        """File the candidates of an output (the tokens new since the last one)."""
        completion = output.outputs[0]
        for token, logprobs in zip(completion.token_ids, completion.logprobs or [], strict=False):
            self.search.next_tokens[self.next_prefix] = [
                (int(t), float(lp.logprob)) for t, lp in logprobs.items()
            ]
            self.next_prefix = (*self.next_prefix, int(token))


def rollout_params(search: Search, prefix_len: int, trie: ItemTrie, trie_path: str) -> Any:
    """SamplingParams of the rollouts of ``search``'s beams at ``prefix_len`` (one object for
    all of them: ``skip_clone``): greedy to the item's end, the top candidates at every step,
    every step's output as it comes (``DELTA``)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    n_logprobs = max(logprobs_needed(trie, search.width, d) for d in range(prefix_len, trie.depth))
    return SamplingParams(
        max_tokens=trie.depth - prefix_len,
        temperature=0.0,
        logprobs=n_logprobs,
        detokenize=False,
        skip_clone=True,
        output_kind=RequestOutputKind.DELTA,
        stop_token_ids=[trie.end_token_id],
        extra_args=constraint_args(trie_path, prefix_len, search.exclude),
    )


def advance(
    search: Search, end_token_id: int, rollouts: Sequence[_Rollout]
) -> tuple[list[tuple[int, ...]], list[_Rollout]]:
    """Expand ``search`` as far as the candidates at hand allow; then the live beams no rollout
    will bring candidates for (each needs a new request), and the rollouts no live beam needs
    (to abort)."""
    while not search.done and all(t in search.next_tokens for t, _ in search.running):
        expand(search, [search.next_tokens[t] for t, _ in search.running], end_token_id)
    if search.done:
        return [], list(rollouts)
    level = search.depth
    live = {t for t, _ in search.running}
    keep = [r for r in rollouts if len(r.next_prefix) >= level and r.next_prefix[:level] in live]
    coming = {r.next_prefix for r in keep}
    need = [t for t, _ in search.running if t not in search.next_tokens and t not in coming]
    return need, [r for r in rollouts if r not in keep]


def beam_search(
    llm: Any, searches: list[Search], trie: ItemTrie, trie_path: str, lora_request: Any = None
) -> list[list[tuple[int, float]]]:
    """Run every user's search to the end with a synchronous ``vllm.LLM``; per user ranked items.

    Every beam that needs candidates gets a request that decodes greedily to the item's end
    (a *rollout*): its first output is the beam's candidates, each later one those of the
    beam's argmax child, then of that child's argmax child. A kept beam that is its parent's
    argmax child (most beams at the deeper levels) thus needs no request of its own, and its
    candidates come from a one-token decoding step on the parent's KV cache instead of a new
    request re-reading the prompt's last, partial cache block. Rollouts whose path leaves the
    beam are aborted. All users' requests share the engine's steps; results are those of
    ``beam_search_levels`` (and of HF's beam search).

    ``lora_request`` is one adapter for all searches, or a list with one per search (None: no
    adapter), mixed in the engine's batches.
    """
    from vllm.inputs import tokens_input

    if not searches:
        return []
    engine = llm.llm_engine
    check_engine(engine.model_config, max(s.width for s in searches), trie)
    per_search = isinstance(lora_request, list | tuple)
    loras = dict(zip(map(id, searches), lora_request, strict=True)) if per_search else {}
    end = trie.end_token_id
    rollouts: dict[str, _Rollout] = {}
    by_search: dict[int, list[_Rollout]] = {id(s): [] for s in searches}
    touched = list(searches)
    try:
        while True:
            drop: list[str] = []
            for s in touched:
                need, stale = advance(s, end, by_search[id(s)])
                for r in stale:
                    by_search[id(s)].remove(r)
                    if rollouts.pop(r.name, None) is not None:
                        drop.append(r.name)
                if need:
                    params = rollout_params(s, len(need[0]), trie, trie_path)
                    for prefix in need:
                        name = f"llmrec-beam-{next(_request_ids)}"
                        rollout = _Rollout(s, name, prefix)
                        rollouts[name] = rollout
                        by_search[id(s)].append(rollout)
                        prompt = tokens_input(s.prompt + list(prefix))
                        lora = loras[id(s)] if per_search else lora_request
                        engine.add_request(name, prompt, params, lora_request=lora)
            if drop:
                engine.abort_request(drop)
            if all(s.done for s in searches):
                break
            if not engine.has_unfinished_requests():
                raise RuntimeError("constrained beam search stalled: no request left to wait for")
            seen: dict[int, Search] = {}
            for out in engine.step():
                got = rollouts.get(out.request_id)
                if got is None:
                    continue  # aborted, or not ours
                got.record(out)
                seen[id(got.search)] = got.search
                if out.finished:
                    rollouts.pop(got.name)
                    by_search[id(got.search)].remove(got)
            touched = list(seen.values())
    except BaseException:
        if rollouts:
            engine.abort_request(list(rollouts))
        raise
    return [ranked(s, trie) for s in searches]


def check_engine(model_config: Any, width: int, trie: ItemTrie | None = None) -> None:
    """Raise unless the engine returns processed logits and enough of them for ``width``.

    With ``trie``, a beam needs ``logprobs_needed(trie, width)`` log-probabilities per request
    (no more than a node has children); without, ``width``.
    """
    mode = getattr(model_config, "logprobs_mode", None)
    if mode != "processed_logits":
        raise ValueError(
            f"the engine's logprobs_mode is {mode!r}; constrained beam search needs "
            "'processed_logits' (the constrained raw log-probabilities)"
        )
    limit = getattr(model_config, "max_logprobs", 20)
    needed = width if trie is None else logprobs_needed(trie, width)
    if limit != -1 and needed > limit:
        raise ValueError(
            f"beam width {width} needs {needed} log-probabilities per beam request, above "
            f"the engine's max_logprobs={limit}; use a width of at most {limit} or build the "
            "engine with a larger max_logprobs (EngineConfig.max_logprobs)"
        )
