"""The trie constraint as a vLLM V1 logits processor, turned on per request.

``TrieLogitsProcessor`` is passed once to the engine (``LLM(logits_processors=[...])``); a request
opts in through ``SamplingParams(extra_args=constraint_args(trie_path, ...))`` (``vllm_xargs`` over
vLLM's HTTP API), so constrained and free-text requests share one engine. The trie is the same
``ItemTrie`` the HF processor uses, saved once with ``save_trie`` and loaded by path inside the
engine process (which may be another process than the caller's).

The engine opens only tries inside the directories its owner allows (``LLMREC_TRIE_DIRS``,
``os.pathsep``-separated; default: ``trie_dir()``, where ``trie_file`` saves them), so a client of
vLLM's HTTP server cannot make it open other files; at most ``_TRIE_CACHE`` tries stay loaded.

A request's trie state is never kept: its generated tokens are the last ``prefix_len`` prompt
tokens (a beam-search step continues a prefix fed as prompt) plus its own output tokens, and
``ItemTrie.constrain`` walks them for every constrained row of the batch at once (one call per
distinct length). Allowed tokens keep their *raw* log-probability, everything else gets -inf:
sampling is unchanged by the shift, and with ``logprobs_mode="processed_logits"`` the logprobs a
request gets back are exactly the per-token scores of HF's constrained beam search.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmrec.constrain.trie import ItemTrie

logger = logging.getLogger(__name__)

try:  # vLLM is optional: without it the helpers below still work, the processor does not exist.
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # pragma: no cover - exercised in the main (vLLM-free) environment
    LogitsProcessor = object
    BatchUpdate = Any
    process_dict_updates = None

ARG_TRIE = "llmrec_trie"  # path of a trie saved by save_trie: turns the constraint on
ARG_PREFIX = "llmrec_prefix_len"  # how many trailing prompt tokens are already item tokens
ARG_EXCLUDE = "llmrec_exclude"  # item indices (trie order) the request may not produce
_BAN_CACHE = 256  # ban rows kept per trie (beam steps repeat one user's exclusions)
_TRIE_CACHE = 16  # tries kept loaded per process (a server swaps catalogs, it must not grow)
TRIE_DIRS_ENV = "LLMREC_TRIE_DIRS"


def trie_dir() -> Path:
    """The default folder of saved tries (the one folder allowed when ``LLMREC_TRIE_DIRS`` is unset)."""
    return Path(tempfile.gettempdir()) / "llmrec-tries"


def allowed_trie_dirs() -> tuple[Path, ...]:
    """Folders the engine may load tries from: ``LLMREC_TRIE_DIRS``, else ``trie_dir()``."""
    raw = os.environ.get(TRIE_DIRS_ENV, "")
    dirs = [Path(d) for d in raw.split(os.pathsep) if d] or [trie_dir()]
    return tuple(d.resolve() for d in dirs)


def check_trie_path(path: str) -> Path:
    """``path`` resolved, if it is a file inside an allowed folder; else a ValueError (no probing)."""
    resolved = Path(path).resolve()
    allowed = allowed_trie_dirs()
    if not any(resolved.is_relative_to(d) for d in allowed):
        names = os.pathsep.join(str(d) for d in allowed)
        raise ValueError(
            f"{ARG_TRIE}: {path!r} is outside the trie folders this server allows ({names}); "
            f"its owner sets them with {TRIE_DIRS_ENV}"
        )
    if not resolved.is_file():
        raise ValueError(f"{ARG_TRIE} must name a trie file saved by save_trie, got {path!r}")
    return resolved


def save_trie(trie: ItemTrie, path: str | Path) -> Path:
    """Write a trie's constructor fields to ``path`` (torch format, loadable with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {f.name: getattr(trie, f.name) for f in dataclasses.fields(trie) if f.init}
    fields = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(fields, tmp)
    tmp.replace(path)
    return path


@functools.lru_cache(maxsize=_TRIE_CACHE)
def load_trie(path: str) -> ItemTrie:
    """A trie saved by ``save_trie`` inside an allowed folder (cached: requests share one)."""
    fields = torch.load(check_trie_path(path), weights_only=True)
    return ItemTrie(**fields)


def constraint_args(
    trie_path: str | Path, prefix_len: int = 0, exclude: list[int] | None = None
) -> dict[str, Any]:
    """``SamplingParams.extra_args`` that constrain a request to the trie's items."""
    args: dict[str, Any] = {ARG_TRIE: str(trie_path), ARG_PREFIX: int(prefix_len)}
    if exclude:
        args[ARG_EXCLUDE] = sorted({int(i) for i in exclude})
    return args


@dataclass(frozen=True)
class _Row:
    """A constrained request in the batch: where its item tokens are and what it may not name."""

    trie_path: str
    prompt_tail: tuple[int, ...]
    output: list[int]  # vLLM's live list of the request's output tokens
    exclude: tuple[int, ...]

    @property
    def length(self) -> int:
        """Item tokens generated so far."""
        return len(self.prompt_tail) + len(self.output)

    def generated(self) -> list[int]:
        return [*self.prompt_tail, *self.output]


def _parse(
    extra: dict[str, Any] | None, check: bool = True
) -> tuple[str, int, tuple[int, ...]] | None:
    """(trie path, prefix length, exclusions) of a request, None if it is unconstrained.

    ``check=False`` skips the checks (the engine side: ``validate_params`` ran at admission).
    """
    if not extra or extra.get(ARG_TRIE) is None:
        return None
    path = extra[ARG_TRIE]
    prefix = extra.get(ARG_PREFIX, 0)
    exclude = extra.get(ARG_EXCLUDE) or ()
    if not check:
        return path, prefix, tuple(exclude)
    if not isinstance(path, str):
        raise ValueError(f"{ARG_TRIE} must name a trie file saved by save_trie, got {path!r}")
    check_trie_path(path)
    if not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 0:
        raise ValueError(f"{ARG_PREFIX} must be a non-negative integer, got {prefix!r}")
    if not isinstance(exclude, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in exclude
    ):
        raise ValueError(f"{ARG_EXCLUDE} must be a list of item indices, got {exclude!r}")
    return path, prefix, tuple(exclude)


class TrieLogitsProcessor(LogitsProcessor):
    """vLLM V1 logits processor: rows that ask for it may only continue catalog items."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject malformed constraint arguments before the request reaches the batch."""
        parsed = _parse(sampling_params.extra_args)
        if parsed is None:
            return
        trie = load_trie(parsed[0])
        bad = [i for i in parsed[2] if not 0 <= i < len(trie.item_ids)]
        if bad:
            raise ValueError(f"{ARG_EXCLUDE}: no items with indices {bad[:5]}")
        if parsed[1] > trie.depth:
            raise ValueError(f"{ARG_PREFIX}={parsed[1]} is longer than an item ({trie.depth})")

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        """Empty state; tries load lazily, the first time a request names one."""
        self.device = device
        self.rows: dict[int, _Row] = {}
        self._tries: OrderedDict[str, ItemTrie] = OrderedDict()
        self._bans: dict[str, OrderedDict[tuple[int, ...], torch.Tensor]] = {}

    def is_argmax_invariant(self) -> bool:
        """Masking changes the argmax."""
        return False

    def _trie(self, path: str) -> ItemTrie:
        if path not in self._tries:
            self._tries[path] = load_trie(path).to(self.device)
            while len(self._tries) > _TRIE_CACHE:
                old, _ = self._tries.popitem(last=False)
                self._bans.pop(old, None)
        self._tries.move_to_end(path)
        return self._tries[path]

    def _ban_row(self, path: str, exclude: tuple[int, ...]) -> torch.Tensor:
        cache = self._bans.setdefault(path, OrderedDict())
        if exclude not in cache:
            cache[exclude] = self._trie(path).banned_nodes([list(exclude)])[0]
            while len(cache) > _BAN_CACHE:
                cache.popitem(last=False)
        cache.move_to_end(exclude)
        return cache[exclude]

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track which batch rows are constrained (added, removed, moved requests)."""

        def new_row(params: Any, prompt: list[int] | None, output: list[int]) -> _Row | None:
            parsed = _parse(params.extra_args, check=False)
            if parsed is None:
                return None
            path, prefix, exclude = parsed
            tail = tuple(prompt[len(prompt) - prefix :]) if prompt and prefix else ()
            return _Row(path, tail, output, exclude)

        assert process_dict_updates is not None
        process_dict_updates(self.rows, batch_update, new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask every constrained row in place; other rows are left as they are.

        Rows are grouped by trie and generated length (one ``constrain`` call each). A group
        that fills a contiguous run of batch rows (a beam-search level: every row of the batch)
        is normalised and masked in place on a view; others go through a gather and a copy back.
        """
        if not self.rows:
            return logits
        groups: dict[tuple[str, int], list[int]] = {}
        n_rows = logits.shape[0]
        for index, row in self.rows.items():
            if index < n_rows:
                groups.setdefault((row.trie_path, row.length), []).append(index)
        for (path, _), indices in groups.items():
            indices.sort()
            trie = self._trie(path)
            rows = [self.rows[i] for i in indices]
            generated = torch.tensor(
                [r.generated() for r in rows], dtype=torch.long, device=logits.device
            ).reshape(len(rows), -1)
            banned = banned_rows = None
            if any(r.exclude for r in rows):
                banned = torch.stack([self._ban_row(path, r.exclude) for r in rows])
                banned_rows = torch.arange(len(rows), device=logits.device)
            lo, hi = indices[0], indices[-1] + 1
            if hi - lo == len(indices):
                view = logits[lo:hi]
                # Raw log-probabilities, so processed logits are HF's beam scores (module doc).
                view.copy_(torch.log_softmax(view, dim=-1)).nan_to_num_(nan=float("-inf"))
                out = trie.constrain(view, generated, banned, banned_rows, inplace=True)
                if out.data_ptr() != view.data_ptr():  # every path is in place today
                    view.copy_(out)
                continue
            idx = torch.tensor(indices, device=logits.device)
            scores = torch.log_softmax(logits[idx], dim=-1).nan_to_num_(nan=float("-inf"))
            logits[idx] = trie.constrain(scores, generated, banned, banned_rows, inplace=True)
        return logits
