"""Benchmark (issue 6): trie-constrained decoding emits only catalog items, at almost no cost.

One run, one tokenizer, the same models and prompts for every variant. Catalogs of 1k, 100k and
1M items (3 levels × 256 codes, random distinct code tuples, seeded); 8 prompts × 50 beams,
K = 10 returned sequences; prompts of ~100–130 tokens (a rendered history of SIDs), left-padded.

1. **Time inside the constraint per decoding step.** Each logits processor's ``__call__`` is
   wrapped with ``time.perf_counter`` (on CUDA, synchronised before each clock read) during
   ``model.generate(num_beams=50, num_return_sequences=10)``. Methods:

   * ``trie``: the library's ``TrieLogitsProcessor`` as ``constrained_generate_kwargs`` sets it up
     for beam search (masking HF's ``log_softmax`` output in place);
   * ``trie_fresh``: the same writing into a fresh (rows × |V|) tensor, as it does when HF keeps
     the tensor it passes in (greedy or sampling with ``output_logits``);
   * ``dict_baseline``: ``DictPrefixProcessor``, a re-implementation, written for this benchmark,
     of the technique MiniOneRec's ``LogitProcessor.py`` uses (a Python dict keyed by the
     ``'-'.join`` of token-id prefixes; per step a ``log_softmax`` over the vocabulary, a fresh
     (B·K × |V|) mask, and a Python loop over every beam: ``.tolist()``, string key, dict lookup,
     index-assign). It is not their code;
   * ``trie+banned``: ``trie`` with per-prompt exclusions (35 items each), as
     ``HFRecommender`` uses them (100k and 1M catalogs).

   The per-search figure (``search_ms``) is the sum over step positions of the median time at
   that position across repetitions (robust to bursts of load from other processes); the
   headline speedup is the ratio of those. Every constrained search must return only catalog
   items (asserted via ``trie.items_of``); the dict baseline's top items are compared with ours
   (the same constraint: the same beams up to ties).
   1b (full run only): the same processors alone, on synthetic beam states, with a
   Qwen2.5-sized vocabulary (152,064): there the (rows × |V|) passes dominate everything.
2. **Whole constrained beam search ÷ unconstrained.** Wall time of ``generate`` with the trie
   processor, with the dict processor and with none (same beams, ``max_new_tokens`` = trie
   depth), on the 100k catalog, for the quickstart's tiny model and one about 8× larger.
   Warm-up runs, then repetitions with the variants interleaved (order reversed every other
   round); the ratio of medians, the median of per-round ratios, and 1 + (time inside the
   constraint ÷ unconstrained time), which the machine's noise barely touches.
3. **Trie build time and memory** at 1M items: ``ItemTrie.from_sid_map`` and
   ``ItemTrie.from_sequences`` wall time, ``trie.nbytes``, RSS growth, and the peak traced by
   ``tracemalloc`` during a second (untimed) build; the dict baseline's build time and RSS growth.
4. With CUDA available, parts 1 and 2 are repeated on the GPU; otherwise only ``cpu`` is recorded.

The CPU time other processes took during each part is recorded (``foreign_cpu_share``), and
each part first waits (a bounded time) for the machine to be quiet: other jobs on a small
machine inflate and scatter the timings, the trie's many small 2-thread tensor ops far more than
the baseline's single-threaded Python loop (each op can stall on a descheduled OpenMP thread).
``--threads 1`` gives numbers that hold up better on a shared machine.

Run (from the repository root)::

    python scripts/bench/constrained_decoding.py           # full: ~5 minutes on 2 CPU cores
    python scripts/bench/constrained_decoding.py --quick   # 1k + 100k catalogs, < 1 minute
    python scripts/bench/constrained_decoding.py --threads 1 --out \
        benchmarks/results/constrained_decoding_1thread.json

Writes ``benchmarks/results/constrained_decoding.json`` (``constrained_decoding_quick.json``
with ``--quick``): every measured row plus a ``summary``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import LogitsProcessor

from llmrec.constrain.hf import TrieLogitsProcessor, constrained_generate_kwargs
from llmrec.constrain.trie import ItemTrie
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.io import write_text_atomic
from llmrec.tokens import add_sid_tokens, build_tiny_model, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "constrained_decoding.json"
TINY_RECIPE = ROOT / "recipes" / "sft" / "tiny-cpu.yaml"
LEVELS, CODEBOOK = 3, 256
N_PROMPTS, NUM_BEAMS, TOP_K = 8, 50, 10
N_EXCLUDED = 35  # items excluded per prompt on the banned path (a user's history)
LARGE_VOCAB = 152_064  # Qwen2.5's embedding rows, for part 1b
GOALS = {"step_speedup": 20.0, "overhead_ratio": 1.03, "build_seconds": 3.0, "build_mb": 200.0}
MB = 2.0**20

Row = dict[str, Any]


# ---- machine ---------------------------------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class LoadMonitor:
    """CPU time other processes used since ``start()``, as a share of all cores' time."""

    def __init__(self, max_wait: float) -> None:
        self.t0 = self.busy0 = self.own0 = 0.0
        self.max_wait = max_wait
        self.start()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return float("nan")
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        """Reset the window."""
        self.t0, self.busy0 = time.perf_counter(), self._busy()
        t = os.times()
        self.own0 = t.user + t.system

    def share(self) -> float:
        """Foreign CPU share since ``start()`` (0 = this process alone, 1 = all cores busy)."""
        t = os.times()
        own = t.user + t.system - self.own0
        wall = time.perf_counter() - self.t0
        foreign = self._busy() - self.busy0 - own
        return round(max(0.0, foreign / (wall * (os.cpu_count() or 1))), 3)

    def wait_quiet(self, threshold: float = 0.1) -> float:
        """Sleep until other processes use < ``threshold`` of the CPUs over a 1 s window (at
        most ``max_wait`` seconds); the seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.max_wait:
            self.start()
            time.sleep(1.0)
            if self.share() < threshold:
                break
        waited = time.perf_counter() - t0
        if waited > 1.5:
            print(f"  (waited {waited:.0f} s for other processes to quieten)", flush=True)
        self.start()
        return round(waited, 1)


# ---- catalogs, tokenizer, prompts ------------------------------------------------------------


def random_catalog(n_items: int, seed: int) -> SemanticIdMap:
    """``n_items`` distinct random code tuples (LEVELS × CODEBOOK), in random order."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(CODEBOOK**LEVELS, size=n_items, replace=False)
    codes = np.stack([(flat // CODEBOOK**lv) % CODEBOOK for lv in reversed(range(LEVELS))], 1)
    return SemanticIdMap(tuple(f"i{k}" for k in range(n_items)), codes, (CODEBOOK,) * LEVELS)


def synthetic_corpus(n: int, seed: int) -> list[str]:
    """Pseudo-English sentences (random syllable words) to train a ~4k-token tokenizer on."""
    rng = np.random.default_rng(seed)
    syl = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(6000)]
    common = ["the", "user", "bought", "these", "items", "in", "order", "recommend", "next"]
    vocab = words + common * 200
    return [" ".join(rng.choice(vocab, size=rng.integers(8, 24))) + "." for _ in range(n)]


def render_prompts(sid_map: SemanticIdMap, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """N_PROMPTS histories of 14–20 SIDs rendered as text, left-padded: (input_ids, mask)."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(N_PROMPTS):
        rows = rng.integers(0, len(sid_map), size=int(rng.integers(14, 21)))
        hist = [sid_map.sid(sid_map.item_ids[r]) for r in rows]
        texts.append(
            "The user bought these items, in order: "
            + ", ".join(hist)
            + ".\nRecommend the next item.\n### Response:\n"
        )
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def exclusions(n_items: int, seed: int) -> list[list[int]]:
    """N_EXCLUDED random item indices per prompt (stand-ins for each user's history)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=N_EXCLUDED, replace=False).tolist() for _ in range(N_PROMPTS)]


def tiny_model_sizes() -> tuple[dict[str, int], str]:
    """The quickstart tiny model's sizes: from ``recipes/sft/tiny-cpu.yaml`` if present."""
    sizes = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
    if not TINY_RECIPE.exists():
        return sizes, "default (hidden 128, 2 layers, 4 heads)"
    import yaml

    aliases = {
        "tiny_hidden_size": "hidden_size",
        "tiny_layers": "num_layers",
        "tiny_heads": "num_heads",
        "hidden_size": "hidden_size",
        "num_layers": "num_layers",
        "num_hidden_layers": "num_layers",
        "num_heads": "num_heads",
        "num_attention_heads": "num_heads",
    }

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in aliases and isinstance(value, int) and not isinstance(value, bool):
                    sizes[aliases[key]] = value
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(yaml.safe_load(TINY_RECIPE.read_text()))
    return sizes, str(TINY_RECIPE.relative_to(ROOT))


def n_params(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---- the baseline ----------------------------------------------------------------------------


def build_dict_table(sequences: np.ndarray) -> dict[str, list[int]]:
    """Prefix table as MiniOneRec builds it: walk every item's token sequence, and for each
    prefix (its token ids ``'-'.join``-ed into a string) collect the tokens that may follow."""
    table: dict[str, set[int]] = {}
    for seq in sequences.tolist():
        for i in range(len(seq)):
            key = "-".join(str(t) for t in seq[:i])
            if key not in table:
                table[key] = set()
            table[key].add(seq[i])
    return {key: list(tokens) for key, tokens in table.items()}


class DictPrefixProcessor(LogitsProcessor):
    """Re-implementation of MiniOneRec's decoding constraint (the technique, not their code).

    Per step: ``log_softmax`` over the full vocabulary, a freshly allocated (B·K × |V|) mask of
    -1e6, then a Python loop over every beam: the beam's generated tokens ``.tolist()``, joined
    into a string key, looked up in the dict, and the allowed tokens index-assigned to 0 in the
    mask. (MiniOneRec keys its first step on the prompt's last tokens and keeps a step counter;
    slicing after the prompt length costs the same and needs no state.)
    """

    def __init__(self, table: dict[str, list[int]], num_beams: int, prompt_length: int) -> None:
        self.table = table
        self.num_beams = num_beams
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Mask one decoding step."""
        scores = torch.nn.functional.log_softmax(scores, dim=-1)  # type: ignore[assignment]
        mask = torch.full_like(scores, -1_000_000.0)
        beams = input_ids.view(-1, self.num_beams, input_ids.shape[-1])
        for batch_id, beam_sent in enumerate(beams):
            for beam_id, sent in enumerate(beam_sent):
                key = "-".join(str(t) for t in sent[self.prompt_length :].tolist())
                allowed = self.table.get(key, [])
                if not allowed:
                    continue
                mask[batch_id * self.num_beams + beam_id, allowed] = 0
        return scores + mask  # type: ignore[return-value]


class Timed(LogitsProcessor):
    """Wraps a processor and records the seconds each call takes (one call per step)."""

    def __init__(self, inner: Callable[[Any, Any], Any], sync: bool) -> None:
        self.inner = inner
        self.sync = sync
        self.seconds: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Call the wrapped processor between two clock reads."""
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        if self.sync:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - t0)
        return out


# ---- generation ------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything one device's runs share."""

    device: torch.device
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    vocab_size: int
    tries: dict[int, ItemTrie] = field(default_factory=dict)
    tables: dict[int, dict[str, list[int]]] = field(default_factory=dict)


def gen_kwargs(model: Any, trie: ItemTrie, prompt_length: int) -> dict[str, Any]:
    """Constrained generate settings (beams, K, lengths, stop token) from the library."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return constrained_generate_kwargs(
            model,
            trie,
            prompt_length,
            num_beams=NUM_BEAMS,
            num_return_sequences=TOP_K,
            do_sample=False,
        )


def generate(
    model: Any, setup: Setup, kwargs: dict[str, Any], processor: LogitsProcessor | None
) -> tuple[torch.Tensor, float, float]:
    """One beam search: (generated tokens [N_PROMPTS·K, T], wall seconds, CPU seconds)."""
    kw = dict(kwargs)
    kw["logits_processor"] = [processor] if processor is not None else None
    sync = setup.device.type == "cuda"
    if sync:
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=setup.input_ids, attention_mask=setup.attention_mask, **kw)
    if sync:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out[:, setup.prompt_length :], wall, cpu


CLEAN_LOAD = 0.15  # a repetition counts when other processes used < 15% of the CPUs meanwhile


def probed(
    model: Any,
    setup: Setup,
    kwargs: dict[str, Any],
    processor: LogitsProcessor | None,
    probe: LoadMonitor,
) -> tuple[torch.Tensor, float, float, bool]:
    """``generate`` plus whether the machine was quiet meanwhile (``CLEAN_LOAD``)."""
    probe.start()
    out, wall, cpu = generate(model, setup, kwargs, processor)
    return out, wall, cpu, probe.share() < CLEAN_LOAD


def items_per_prompt(trie: ItemTrie, generated: torch.Tensor) -> list[list[str | None]]:
    """The K returned items of each prompt (None for an invalid sequence)."""
    items = trie.items_of(generated)
    return [items[p * TOP_K : (p + 1) * TOP_K] for p in range(N_PROMPTS)]


def assert_valid(
    trie: ItemTrie, generated: torch.Tensor, what: str, excluded: list[list[int]] | None = None
) -> None:
    """Every returned sequence names a catalog item (and none of its prompt's exclusions)."""
    per_prompt = items_per_prompt(trie, generated)
    bad = sum(i is None for p in per_prompt for i in p)
    assert bad == 0, f"{what}: {bad}/{N_PROMPTS * TOP_K} returned sequences are not items"
    if excluded is not None:
        for items, ex in zip(per_prompt, excluded, strict=True):
            names = {trie.item_ids[i] for i in ex}
            assert not names & set(items), f"{what}: an excluded item was returned"


def ms_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Mean / median / p90 / min in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    return {
        "mean": round(statistics.fmean(ms), 4),
        "median": round(statistics.median(ms), 4),
        "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 4),
        "min": round(ms[0], 4),
    }


# ---- part 1 ----------------------------------------------------------------------------------


def step_cost(
    model: Any,
    setup: Setup,
    catalogs: Sequence[int],
    reps: int,
    banned_reps: int,
    monitor: LoadMonitor,
    retry: int,
) -> list[Row]:
    """Per-step time inside each constraint, per catalog; checks validity and agreement."""
    rows: list[Row] = []
    sync = setup.device.type == "cuda"
    P, V = setup.prompt_length, setup.vocab_size
    for n_items in catalogs:
        waited = monitor.wait_quiet()
        trie = setup.tries[n_items]
        kwargs = gen_kwargs(model, trie, P)
        procs: dict[str, Timed] = {
            "trie": Timed(TrieLogitsProcessor(trie, P, inplace=True), sync),
            "trie_fresh": Timed(TrieLogitsProcessor(trie, P), sync),
            "dict_baseline": Timed(DictPrefixProcessor(setup.tables[n_items], NUM_BEAMS, P), sync),
        }
        n_reps = dict.fromkeys(procs, reps)
        excluded = None
        if n_items >= 100_000:  # the recommender's path: each prompt's history excluded
            excluded = exclusions(n_items, n_items)
            banned = trie.banned_nodes(excluded)
            procs["trie+banned"] = Timed(
                TrieLogitsProcessor(trie, P, banned, NUM_BEAMS, inplace=True), sync
            )
            n_reps["trie+banned"] = banned_reps
        # Warm-up (its outputs are the ones checked), then the methods interleaved until each
        # has its repetitions on a quiet machine (or `retry` × as many rounds have run).
        outs = {name: generate(model, setup, kwargs, proc)[0] for name, proc in procs.items()}
        names = list(procs)
        runs: dict[str, dict[bool, list[list[float]]]] = {n: {True: [], False: []} for n in names}
        probe = LoadMonitor(0.0)
        for attempt in range(retry):  # a second attempt, after a wait, if a method got no quiet run
            if attempt:
                if all(runs[n][True] for n in names):
                    break
                waited += monitor.wait_quiet()
            for r in range(retry * reps):
                todo = [n for n in names if len(runs[n][True]) < n_reps[n]]
                if not todo:
                    break
                for name in todo if r % 2 == 0 else todo[::-1]:
                    procs[name].seconds.clear()
                    clean = probed(model, setup, kwargs, procs[name], probe)[3]
                    runs[name][clean].append(list(procs[name].seconds))
        load = monitor.share()
        assert_valid(trie, outs["trie"], f"trie, {n_items} items")
        assert torch.equal(outs["trie"], outs["trie_fresh"]), "in place differs from fresh"
        if excluded is not None:
            assert_valid(trie, outs["trie+banned"], f"trie+banned, {n_items}", excluded)
        top_ours = items_per_prompt(trie, outs["trie"])
        top_base = items_per_prompt(trie, outs["dict_baseline"])
        base_invalid = sum(i is None for p in top_base for i in p)
        agree_top1 = sum(a[0] == b[0] for a, b in zip(top_ours, top_base, strict=True))
        overlap = statistics.fmean(
            len(set(a) & set(b)) / TOP_K for a, b in zip(top_ours, top_base, strict=True)
        )
        depth = trie.depth
        block: list[Row] = []
        for name in names:
            use = runs[name][True] or runs[name][False]  # the noisy ones only if all were
            seconds = [x for run in use for x in run]
            by_index = [seconds[i::depth] for i in range(depth)]
            medians = [statistics.median(s) for s in by_index]
            minima = [min(s) for s in by_index]
            stats = ms_stats(seconds)
            block.append(
                {
                    "part": "step_cost",
                    "catalog_items": n_items,
                    "method": name,
                    "device": setup.device.type,
                    "rows_per_step": N_PROMPTS * NUM_BEAMS,
                    "vocabulary": V,
                    "search_ms": round(1e3 * sum(medians), 4),
                    "search_ms_min": round(1e3 * sum(minima), 4),
                    "step_ms_mean": stats["mean"],
                    "step_ms_median": stats["median"],
                    "step_ms_p90": stats["p90"],
                    "step_ms_min": stats["min"],
                    "n_steps": len(seconds),
                    "clean_reps": len(runs[name][True]),
                    "noisy_reps": len(runs[name][False]),
                    "step_ms_median_by_position": [round(1e3 * m, 4) for m in medians],
                    "foreign_cpu_share": load,
                    "waited_for_quiet_s": waited,
                }
            )
        d = next(r for r in block if r["method"] == "dict_baseline")
        for row in block:
            row["speedup_vs_dict"] = round(d["search_ms"] / row["search_ms"], 2)
            row["speedup_vs_dict_min"] = round(d["search_ms_min"] / row["search_ms_min"], 2)
            row["speedup_vs_dict_mean"] = round(d["step_ms_mean"] / row["step_ms_mean"], 2)
            row["speedup_vs_dict_median"] = round(d["step_ms_median"] / row["step_ms_median"], 2)
            if row["method"] in ("trie", "dict_baseline"):
                row["top1_agreement"] = f"{agree_top1}/{N_PROMPTS}"
                row["topk_overlap"] = round(overlap, 4)
            row["invalid_returned"] = base_invalid if row is d else 0
            if "banned" in row["method"]:
                row["excluded_per_prompt"] = N_EXCLUDED
        rows += block
        t, f = block[0], block[1]
        print(
            f"  {n_items:>9,} items: trie {t['search_ms']:.2f} ms/search "
            f"({t['speedup_vs_dict']}× vs dict {d['search_ms']:.1f}), fresh tensor "
            f"{f['search_ms']:.2f} ({f['speedup_vs_dict']}×); top-1 agree "
            f"{agree_top1}/{N_PROMPTS}; foreign CPU {load:.0%}",
            flush=True,
        )
    return rows


def large_vocab_cost(
    sid_map: SemanticIdMap, device: torch.device, reps: int, monitor: LoadMonitor
) -> list[Row]:
    """Part 1b: the processors alone at a Qwen2.5-sized vocabulary (LARGE_VOCAB), on synthetic
    beam states (each prompt's 50 beams are prefixes of 50 random catalog items).

    Real LLM vocabularies make the (rows × |V|) passes, not the trie logic, the cost: a fresh
    400 × 152k float tensor is 243 MB.
    """
    waited = monitor.wait_quiet()
    V = LARGE_VOCAB
    end = V - LEVELS * CODEBOOK - 1  # the SID tokens are the last ids, as after add_sid_tokens
    cols = [end + 1 + lv * CODEBOOK + sid_map.codes[:, lv] for lv in range(LEVELS)]
    seqs = np.stack([*cols, np.full(len(sid_map), end)], axis=1)
    trie = ItemTrie.from_sequences(seqs, sid_map.item_ids, end).to(device)
    table = build_dict_table(seqs)
    rows_n, prompt_len, depth = N_PROMPTS * NUM_BEAMS, 8, trie.depth
    rng = np.random.default_rng(len(sid_map))
    items = rng.integers(0, len(sid_map), size=rows_n)
    prompt = torch.randint(0, end, (rows_n, prompt_len), generator=torch.Generator().manual_seed(0))
    inputs = [
        torch.cat([prompt, torch.from_numpy(seqs[items, :t])], 1).to(device) for t in range(depth)
    ]
    base = torch.randn(rows_n, V, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    base = base.to(device)
    sync = device.type == "cuda"
    procs: dict[str, LogitsProcessor] = {
        "trie": TrieLogitsProcessor(trie, prompt_len, inplace=True),
        "trie_fresh": TrieLogitsProcessor(trie, prompt_len),
        "dict_baseline": DictPrefixProcessor(table, NUM_BEAMS, prompt_len),
    }
    names = list(procs)
    for t in range(depth):  # in place and fresh give the same scores
        ref = procs["trie"](inputs[t], base.clone())
        assert torch.equal(procs["trie_fresh"](inputs[t], base.clone()), ref)
        del ref
    seconds: dict[str, list[list[float]]] = {n: [[] for _ in range(depth)] for n in names}
    for r in range(reps + 1):  # the first round warms up
        for name in names if r % 2 == 0 else names[::-1]:
            for t in range(depth):
                scores = base.clone()
                if sync:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                procs[name](inputs[t], scores)
                if sync:
                    torch.cuda.synchronize()
                if r:
                    seconds[name][t].append(time.perf_counter() - t0)
                del scores
    load = monitor.share()
    search = {n: sum(statistics.median(s) for s in seconds[n]) for n in names}
    rows = [
        {
            "part": "step_cost_large_vocab",
            "catalog_items": len(sid_map),
            "method": name,
            "device": device.type,
            "rows_per_step": rows_n,
            "vocabulary": V,
            "search_ms": round(1e3 * search[name], 3),
            "step_ms_median_by_position": [
                round(1e3 * statistics.median(s), 3) for s in seconds[name]
            ],
            "speedup_vs_dict": round(search["dict_baseline"] / search[name], 2),
            "reps": reps,
            "beam_states": "synthetic",
            "foreign_cpu_share": load,
            "waited_for_quiet_s": waited,
        }
        for name in names
    ]
    print(
        "  "
        + ", ".join(
            f"{r['method']} {r['search_ms']:.1f} ms/search ({r['speedup_vs_dict']}×)" for r in rows
        )
        + f"; foreign CPU {load:.0%}",
        flush=True,
    )
    return rows


# ---- part 2 ----------------------------------------------------------------------------------


def overhead(
    model: Any,
    label: str,
    setup: Setup,
    n_items: int,
    warmup: int,
    reps: int,
    monitor: LoadMonitor,
    retry: int,
) -> list[Row]:
    """Wall time of generate: trie / dict / unconstrained, interleaved; ratios of medians."""
    waited = monitor.wait_quiet()
    trie, table = setup.tries[n_items], setup.tables[n_items]
    kwargs = gen_kwargs(model, trie, setup.prompt_length)
    sync = setup.device.type == "cuda"
    procs: dict[str, Timed | None] = {
        "unconstrained": None,
        "trie": Timed(TrieLogitsProcessor(trie, setup.prompt_length), sync),
        "dict_baseline": Timed(DictPrefixProcessor(table, NUM_BEAMS, setup.prompt_length), sync),
    }
    names = list(procs)
    for _ in range(warmup):
        for name in names:
            generate(model, setup, kwargs, procs[name])
    # Rounds of all three, order reversed every other round, until `reps` rounds ran on a
    # quiet machine (or `retry` × as many ran); only quiet rounds count, unless none was.
    rounds: dict[bool, list[dict[str, tuple[float, float, float]]]] = {True: [], False: []}
    invalid_unconstrained = 0
    probe = LoadMonitor(0.0)
    for r in range(retry * reps):
        if len(rounds[True]) >= reps:
            break
        result, quiet = {}, True
        for name in names if r % 2 == 0 else names[::-1]:
            proc = procs[name]
            if proc is not None:
                proc.seconds.clear()
            out, w, c, clean = probed(model, setup, kwargs, proc, probe)
            quiet &= clean
            result[name] = (w, c, sum(proc.seconds) if proc is not None else 0.0)
            if name == "trie":
                assert_valid(trie, out, f"trie, {label}")
            if name == "unconstrained" and r == 0:
                invalid_unconstrained = sum(i is None for i in trie.items_of(out))
        rounds[quiet].append(result)
    use = rounds[True] or rounds[False]
    wall = {name: [res[name][0] for res in use] for name in names}
    cpu = {name: [res[name][1] for res in use] for name in names}
    inside = {name: [res[name][2] for res in use] for name in names}
    load = monitor.share()
    base, base_cpu = (
        statistics.median(wall["unconstrained"]),
        statistics.median(cpu["unconstrained"]),
    )
    rows = []
    for name in names:
        med = statistics.median(wall[name])
        paired = [w / u for w, u in zip(wall[name], wall["unconstrained"], strict=True)]
        rows.append(
            {
                "part": "overhead",
                "model": label,
                "catalog_items": n_items,
                "method": name,
                "device": setup.device.type,
                "warmup": warmup,
                "clean_rounds": len(rounds[True]),
                "noisy_rounds": len(rounds[False]),
                "generate_s_median": round(med, 4),
                "generate_s_min": round(min(wall[name]), 4),
                "generate_s_all": [round(w, 4) for w in wall[name]],
                "ratio_vs_unconstrained": round(med / base, 4),
                "ratio_vs_unconstrained_paired_median": round(statistics.median(paired), 4),
                "ratio_vs_unconstrained_min": round(
                    min(wall[name]) / min(wall["unconstrained"]), 4
                ),
                "ratio_vs_unconstrained_cpu_time": round(
                    statistics.median(cpu[name]) / base_cpu, 4
                ),
                "constraint_s_median": round(statistics.median(inside[name]), 5),
                # 1 + time inside the processor / unconstrained wall: the same ratio, without noise.
                "ratio_from_constraint_time": round(1 + statistics.median(inside[name]) / base, 4),
                "foreign_cpu_share": load,
                "waited_for_quiet_s": waited,
            }
        )
    rows[0]["invalid_returned"] = invalid_unconstrained
    t, d = rows[1], rows[2]
    print(
        f"  {label}: unconstrained {base:.3f} s; trie ×{t['ratio_vs_unconstrained']} "
        f"(paired {t['ratio_vs_unconstrained_paired_median']}, from constraint time "
        f"{t['ratio_from_constraint_time']}); dict ×{d['ratio_vs_unconstrained']} (from "
        f"constraint time {d['ratio_from_constraint_time']}); foreign CPU {load:.0%}",
        flush=True,
    )
    return rows


# ---- part 3 ----------------------------------------------------------------------------------


def build_rows(
    sid_map: SemanticIdMap, tokenizer: Any, end: int, traced: bool
) -> tuple[ItemTrie, dict[str, list[int]], list[Row]]:
    """Build the trie (from_sid_map, from_sequences) and the dict table, timing each."""
    n = len(sid_map)
    gc.collect()
    rss0, peak0 = rss_mb(), peak_rss_mb()
    t0 = time.perf_counter()
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, end)
    from_map_s = time.perf_counter() - t0
    rss1, peak1 = rss_mb(), peak_rss_mb()
    seqs = trie.item_sequences().numpy()
    t0 = time.perf_counter()
    again = ItemTrie.from_sequences(seqs, sid_map.item_ids, end)
    from_seq_s = time.perf_counter() - t0
    assert again.nbytes == trie.nbytes
    del again
    t0 = time.perf_counter()
    sid_map.all_sids()  # what from_sid_map spends on checking its first 64 items
    all_sids_s = time.perf_counter() - t0
    traced_peak = None
    if traced:  # a second, untimed build under tracemalloc (numpy reports its buffers to it)
        gc.collect()
        tracemalloc.start()
        ItemTrie.from_sid_map(sid_map, tokenizer, end)
        traced_peak = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()
    rows: list[Row] = [
        {
            "part": "build",
            "catalog_items": n,
            "method": "trie",
            "device": "cpu",
            "build_s_from_sid_map": round(from_map_s, 3),
            "build_s_from_sequences": round(from_seq_s, 3),
            "all_sids_s": round(all_sids_s, 3),
            "mb": round(trie.nbytes / MB, 2),
            "n_nodes": int(trie.node_item.numel()),
            "n_edges": int(trie.edge_key.numel()),
            "rss_delta_mb": round(rss1 - rss0, 1),
            "peak_rss_delta_mb": round(peak1 - peak0, 1),
            "traced_peak_mb": None if traced_peak is None else round(traced_peak, 1),
        }
    ]
    gc.collect()
    rss0, peak0 = rss_mb(), peak_rss_mb()
    t0 = time.perf_counter()
    table = build_dict_table(seqs)
    dict_s = time.perf_counter() - t0
    rows.append(
        {
            "part": "build",
            "catalog_items": n,
            "method": "dict_baseline",
            "device": "cpu",
            "build_s_from_sequences": round(dict_s, 3),
            "n_keys": len(table),
            "rss_delta_mb": round(rss_mb() - rss0, 1),
            "peak_rss_delta_mb": round(peak_rss_mb() - peak0, 1),
        }
    )
    t, d = rows
    print(
        f"  {n:>9,} items: trie from_sid_map {t['build_s_from_sid_map']:.3f} s (of which "
        f"all_sids() ≈ {all_sids_s:.3f} s), from_sequences {t['build_s_from_sequences']:.3f} "
        f"s, {t['mb']} MB; dict {d['build_s_from_sequences']:.2f} s, +{d['rss_delta_mb']} MB "
        "RSS",
        flush=True,
    )
    return trie, table, rows


# ---- report ----------------------------------------------------------------------------------


def print_tables(rows: list[Row]) -> None:
    """The readable report."""
    print(
        "\n== 1. time inside the constraint per decoding step "
        f"({N_PROMPTS} prompts × {NUM_BEAMS} beams = {N_PROMPTS * NUM_BEAMS} rows; "
        "search = Σ per-position medians over quiet repetitions)"
    )
    print(
        f"{'dev':<4} {'items':>9} {'method':<18} {'search ms':>9} {'(min)':>8} "
        f"{'mean ms':>8} {'median ms':>9} {'p90 ms':>8} {'steps':>5} {'speedup':>8} "
        f"{'(min)':>6} {'top-1':>6} {'top-10':>6} {'quiet':>5} {'load':>5}"
    )
    for r in (r for r in rows if r["part"] == "step_cost"):
        print(
            f"{r['device']:<4} {r['catalog_items']:>9,} {r['method']:<18} "
            f"{r['search_ms']:>9.3f} {r['search_ms_min']:>8.3f} {r['step_ms_mean']:>8.3f} "
            f"{r['step_ms_median']:>9.3f} {r['step_ms_p90']:>8.3f} {r['n_steps']:>5} "
            f"{r['speedup_vs_dict']:>7.1f}× {r['speedup_vs_dict_min']:>5.1f}× "
            f"{r.get('top1_agreement', ''):>6} "
            f"{format(r['topk_overlap'], '.2f') if 'topk_overlap' in r else '':>6} "
            f"{r['clean_reps']:>2}/{r['clean_reps'] + r['noisy_reps']:<2} "
            f"{r['foreign_cpu_share']:>5.0%}"
        )
    large = [r for r in rows if r["part"] == "step_cost_large_vocab"]
    if large:
        print(
            f"\n== 1b. processors alone at |V| = {LARGE_VOCAB:,} (Qwen2.5 size), "
            f"{large[0]['catalog_items']:,} items, synthetic beam states"
        )
        print(
            f"{'dev':<4} {'method':<18} {'search ms':>9} {'per position ms':<36} "
            f"{'speedup':>8} {'load':>5}"
        )
        for r in large:
            pos = " ".join(f"{x:8.2f}" for x in r["step_ms_median_by_position"])
            print(
                f"{r['device']:<4} {r['method']:<18} {r['search_ms']:>9.2f} {pos:<36} "
                f"{r['speedup_vs_dict']:>7.1f}× {r['foreign_cpu_share']:>5.0%}"
            )
    print("\n== 2. whole beam search ÷ unconstrained (medians of interleaved quiet rounds)")
    print(
        f"{'dev':<4} {'model':<24} {'items':>8} {'method':<14} {'median s':>9} "
        f"{'ratio':>7} {'paired':>7} {'cpu':>7} {'by c-time':>9} {'in constraint s':>15} "
        f"{'quiet':>5} {'load':>5}"
    )
    for r in (r for r in rows if r["part"] == "overhead"):
        print(
            f"{r['device']:<4} {r['model']:<24} {r['catalog_items']:>8,} {r['method']:<14} "
            f"{r['generate_s_median']:>9.4f} {r['ratio_vs_unconstrained']:>7.4f} "
            f"{r['ratio_vs_unconstrained_paired_median']:>7.4f} "
            f"{r['ratio_vs_unconstrained_cpu_time']:>7.4f} "
            f"{r['ratio_from_constraint_time']:>9.4f} {r['constraint_s_median']:>15.5f} "
            f"{r['clean_rounds']:>2}/{r['clean_rounds'] + r['noisy_rounds']:<2} "
            f"{r['foreign_cpu_share']:>5.0%}"
        )
    print("\n== 3. build time and memory")
    print(
        f"{'items':>10} {'method':<14} {'from_sid_map s':>14} {'from_seqs s':>11} "
        f"{'MB (tensors)':>12} {'RSS +MB':>8} {'peak +MB':>9} {'traced peak':>11}"
    )
    for r in (r for r in rows if r["part"] == "build"):

        def fmt(key: str, spec: str, r: Row = r) -> str:
            value = r.get(key)
            return format("-" if value is None else value, spec)

        print(
            f"{r['catalog_items']:>10,} {r['method']:<14} {fmt('build_s_from_sid_map', '>14')} "
            f"{fmt('build_s_from_sequences', '>11')} {fmt('mb', '>12')} "
            f"{fmt('rss_delta_mb', '>8')} {fmt('peak_rss_delta_mb', '>9')} "
            f"{fmt('traced_peak_mb', '>11')}"
        )


def pick(rows: list[Row], key: str, **match: Any) -> Any:
    """``key`` of the first row whose fields equal ``match`` (None if there is none)."""
    row = next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)
    return None if row is None else row.get(key)


def make_summary(rows: list[Row], device: str) -> dict[str, Any]:
    """The headline numbers and whether each meets its goal (None where not measured)."""
    cpu_step = {"part": "step_cost", "device": "cpu"}
    cpu_over = {"part": "overhead", "device": "cpu", "method": "trie"}
    trie_1m = {"part": "build", "catalog_items": 1_000_000, "method": "trie"}
    s: dict[str, Any] = {
        "step_speedup_vs_dict_100k": pick(
            rows, "speedup_vs_dict", **cpu_step, catalog_items=100_000, method="trie"
        ),
        "step_speedup_vs_dict_1m": pick(
            rows, "speedup_vs_dict", **cpu_step, catalog_items=1_000_000, method="trie"
        ),
        "overhead_ratio_tiny": pick(rows, "ratio_vs_unconstrained", **cpu_over, model_role="tiny"),
        "overhead_ratio_larger": pick(
            rows, "ratio_vs_unconstrained", **cpu_over, model_role="larger"
        ),
        "build_seconds_1m": pick(rows, "build_s_from_sid_map", **trie_1m),
        "build_mb_1m": pick(rows, "mb", **trie_1m),
    }
    goals_pass = {
        "step_speedup_100k": s["step_speedup_vs_dict_100k"],
        "step_speedup_1m": s["step_speedup_vs_dict_1m"],
        "overhead_tiny": s["overhead_ratio_tiny"],
        "overhead_larger": s["overhead_ratio_larger"],
        "build_seconds_1m": s["build_seconds_1m"],
        "build_mb_1m": s["build_mb_1m"],
    }
    extra: dict[str, Any] = {}
    for n, tag in ((100_000, "100k"), (1_000_000, "1m")):
        for method in ("trie", "trie_fresh", "dict_baseline", "trie+banned"):
            name = method.replace("+", "_")
            extra[f"search_ms_{name}_{tag}"] = pick(
                rows, "search_ms", **cpu_step, catalog_items=n, method=method
            )
        for method in ("trie_fresh", "trie+banned"):
            extra[f"step_speedup_vs_dict_{tag}_{method.removeprefix('trie').strip('_+')}"] = pick(
                rows, "speedup_vs_dict", **cpu_step, catalog_items=n, method=method
            )
        extra[f"step_speedup_vs_dict_{tag}_min"] = pick(
            rows, "speedup_vs_dict_min", **cpu_step, catalog_items=n, method="trie"
        )
        extra[f"step_speedup_vs_dict_{tag}_mean"] = pick(
            rows, "speedup_vs_dict_mean", **cpu_step, catalog_items=n, method="trie"
        )
        extra[f"top1_agreement_{tag}"] = pick(
            rows, "top1_agreement", **cpu_step, catalog_items=n, method="trie"
        )
    for role in ("tiny", "larger"):
        for key, field_name in (
            ("paired", "ratio_vs_unconstrained_paired_median"),
            ("from_constraint_time", "ratio_from_constraint_time"),
            ("cpu_time", "ratio_vs_unconstrained_cpu_time"),
        ):
            extra[f"overhead_ratio_{role}_{key}"] = pick(
                rows, field_name, **cpu_over, model_role=role
            )
        extra[f"overhead_ratio_{role}_dict"] = pick(
            rows,
            "ratio_vs_unconstrained",
            part="overhead",
            device="cpu",
            method="dict_baseline",
            model_role=role,
        )
    for method in ("trie", "trie_fresh"):
        extra[f"step_speedup_vs_dict_large_vocab_{method}"] = pick(
            rows, "speedup_vs_dict", part="step_cost_large_vocab", device="cpu", method=method
        )
    extra["build_seconds_1m_from_sequences"] = pick(rows, "build_s_from_sequences", **trie_1m)
    extra["dict_build_seconds_1m"] = pick(
        rows,
        "build_s_from_sequences",
        part="build",
        catalog_items=1_000_000,
        method="dict_baseline",
    )
    extra["dict_build_rss_mb_1m"] = pick(
        rows, "rss_delta_mb", part="build", catalog_items=1_000_000, method="dict_baseline"
    )
    s.update(extra)
    s["device"] = device
    s["goals"] = GOALS
    s["pass"] = {
        name: None
        if value is None
        else (
            value >= GOALS["step_speedup"]
            if name.startswith("step")
            else value <= GOALS["overhead_ratio"]
            if name.startswith("overhead")
            else value <= GOALS["build_seconds"]
            if name.endswith("seconds_1m")
            else value <= GOALS["build_mb"]
        )
        for name, value in goals_pass.items()
    }
    return s


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    """Run every part and write the JSON report."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k + 100k catalogs, fewer repetitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/...")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    logging.getLogger("llmrec").setLevel(logging.WARNING)
    quick = args.quick
    sizes = [1_000, 100_000] if quick else [1_000, 100_000, 1_000_000]
    step_reps, banned_reps = (1, 1) if quick else (5, 2)
    # (warm-up rounds, repetitions) per model.
    overhead_plan = (
        {"tiny": (1, 2), "larger": (1, 2)} if quick else {"tiny": (2, 21), "larger": (1, 5)}
    )
    t_all = time.perf_counter()
    monitor = LoadMonitor(max_wait=5.0 if quick else 45.0)
    retry = 1 if quick else 2  # rounds may be repeated up to retry × reps to find quiet ones

    print("tokenizer, catalogs", flush=True)
    tokenizer = train_tokenizer(synthetic_corpus(4000, args.seed), vocab_size=4000)
    maps = {n: random_catalog(n, args.seed + k) for k, n in enumerate(sizes)}
    add_sid_tokens(tokenizer, maps[sizes[0]])  # every map shares the 3 × 256 SID vocabulary
    end = int(tokenizer.eos_token_id)
    print(f"  vocabulary {len(tokenizer)} tokens", flush=True)

    print("3. builds", flush=True)
    rows: list[Row] = []
    tries: dict[int, ItemTrie] = {}
    tables: dict[int, dict[str, list[int]]] = {}
    monitor.wait_quiet()
    for n in sorted(sizes, reverse=True):  # the largest first: a cleaner RSS measurement
        tries[n], tables[n], brows = build_rows(maps[n], tokenizer, end, traced=n == max(sizes))
        rows += brows
    build_load = monitor.share()
    for r in rows:
        r["foreign_cpu_share"] = build_load

    tiny_sizes, tiny_source = tiny_model_sizes()
    larger_sizes = (
        {"hidden_size": 192, "num_layers": 2, "num_heads": 3}
        if quick
        else {"hidden_size": 384, "num_layers": 4, "num_heads": 6}
    )
    models = {
        role: build_tiny_model(
            tokenizer,
            hidden_size=size["hidden_size"],
            num_layers=size["num_layers"],
            num_heads=size["num_heads"],
        ).eval()
        for role, size in (("tiny", tiny_sizes), ("larger", larger_sizes))
    }
    params = {role: n_params(m) for role, m in models.items()}
    labels = {
        role: (f"{role} h{s['hidden_size']}×{s['num_layers']}L {params[role] / 1e6:.2f}M")
        for role, s in (("tiny", tiny_sizes), ("larger", larger_sizes))
    }
    print(
        f"  models: {labels} (tiny from {tiny_source}); larger/tiny params "
        f"{params['larger'] / params['tiny']:.1f}×",
        flush=True,
    )

    input_ids, attention_mask = render_prompts(maps[100_000], tokenizer, args.seed)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        setup = Setup(
            device,
            input_ids.to(device),
            attention_mask.to(device),
            int(input_ids.shape[1]),
            len(tokenizer),
            {n: t.to(device) for n, t in sorted(tries.items())},
            tables,
        )
        print(
            f"1. step cost on {device.type} (prompt {setup.prompt_length} tokens, "
            f"{int(attention_mask.sum(1).min())}–{setup.prompt_length} unpadded)",
            flush=True,
        )
        model = models["tiny"].to(device)
        rows += step_cost(model, setup, sizes, step_reps, banned_reps, monitor, retry)
        if not quick:
            print(
                f"1b. processors alone at |V| = {LARGE_VOCAB:,} on {device.type} (100k "
                "catalog, synthetic beam states)",
                flush=True,
            )
            rows += large_vocab_cost(maps[100_000], device, 3, monitor)
        print(f"2. overhead on {device.type} (100k catalog)", flush=True)
        for role, (warmup, reps) in overhead_plan.items():
            model = models[role].to(device)
            orow = overhead(model, labels[role], setup, 100_000, warmup, reps, monitor, retry)
            for r in orow:
                r["model_role"] = role
                r["params"] = params[role]
            rows += orow
        for role in models:
            models[role] = models[role].to("cpu")

    seconds_total = round(time.perf_counter() - t_all, 1)
    print_tables(rows)
    summary = make_summary(rows, "+".join(d.type for d in devices))
    summary["seconds_total"] = seconds_total
    result = {
        "benchmark": "constrained_decoding",
        "quick": quick,
        "config": {
            "catalogs": sizes,
            "levels": LEVELS,
            "codebook_size": CODEBOOK,
            "prompts": N_PROMPTS,
            "num_beams": NUM_BEAMS,
            "num_return_sequences": TOP_K,
            "max_new_tokens": tries[sizes[0]].depth,
            "prompt_tokens": int(input_ids.shape[1]),
            "prompt_tokens_unpadded_min": int(attention_mask.sum(1).min()),
            "vocabulary": len(tokenizer),
            "overhead_catalog": 100_000,
            "excluded_per_prompt": N_EXCLUDED,
            "tiny_model": {**tiny_sizes, "params": params["tiny"], "source": tiny_source},
            "larger_model": {**larger_sizes, "params": params["larger"]},
            "step_reps": step_reps,
            "banned_reps": banned_reps,
            "retry_factor": retry,
            "quiet_threshold_foreign_cpu": CLEAN_LOAD,
            "overhead_warmup_reps": overhead_plan,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "baseline": "DictPrefixProcessor: a re-implementation of MiniOneRec's technique "
            "written for this benchmark, not their code",
        },
        "summary": summary,
        "rows": rows,
        # Which version of the library was measured (it is edited while benchmarks run).
        "library_sources_sha256": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for path in sorted((ROOT / "llmrec" / "constrain").glob("*.py"))
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    print("\nsummary:", json.dumps(summary, indent=1))
    print(f"total {seconds_total} s")
    out: Path = args.out or (
        RESULTS.with_name("constrained_decoding_quick.json") if quick else RESULTS
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")  # never half-written
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
