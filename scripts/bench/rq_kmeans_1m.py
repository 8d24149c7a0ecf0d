"""Benchmark: RQ-KMeans semantic IDs for a synthetic 1M-item catalog (384-dim embeddings).

Phases: generate clustered embeddings → fit 3 × 256 residual k-means → encode every item →
resolve collisions → diagnostics. Reports wall time per phase and the peak resident memory
(``ru_maxrss``, the process's RSS high-water mark), and writes them as JSON.

How it stays inside 2 minutes and 4 GB on 2 CPU cores:

* the catalog is generated in float32 chunks straight into one preallocated array (1.5 GB);
* each k-means level is fitted on a 200k-item subsample (``--sample``), then all items are
  assigned in 65,536-row batches (what faiss users do): centroids from 200k points are as good as
  from 1M, and fitting costs a fifth;
* distances are ``||x||² - 2x·c + ||c||²``, one matmul per batch, never an [N, k] matrix;
* nothing is ever copied to float64.

Run: ``python scripts/bench/rq_kmeans_1m.py`` (1M items) or ``--quick`` (100k items).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.indexing.collisions import resolve_collisions
from llmrec.indexing.diagnostics import code_diagnostics, prefix_similarity
from llmrec.indexing.quantizers import QuantizerConfig, build_quantizer, make_distance_fn

TARGET_SECONDS = 120.0
TARGET_PEAK_MB = 4096.0
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "rq_kmeans_1m.json"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_catalog(
    n_items: int, dim: int, seed: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm embeddings: 64 topics × 16 subtopics + 64 continuous factors + noise.

    Text-embedding catalogs look roughly like this: coarse topics, finer subtopics, and
    continuous variation within them (a 64-dim random subspace here), plus small isotropic
    noise. Without the continuous factors, items of one subtopic differ only by isotropic noise
    and any quantizer maps them to one tuple (≈90% collisions), which is not what real catalogs
    do. Returns (embeddings float32 [n, dim], subtopic id per item).
    """
    rng = np.random.default_rng(seed)
    n_topics, n_sub, n_factors = 64, 16, 64
    topics = rng.standard_normal((n_topics, dim), dtype=np.float32)
    sub = np.repeat(topics, n_sub, axis=0)
    sub += 0.6 * rng.standard_normal(sub.shape, dtype=np.float32)
    factors = rng.standard_normal((n_factors, dim), dtype=np.float32) / np.sqrt(n_factors)
    x = np.empty((n_items, dim), dtype=np.float32)
    labels = np.empty(n_items, dtype=np.int64)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        lab = rng.integers(0, sub.shape[0], size=stop - start)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= 0.3
        block += sub[lab]
        block += rng.standard_normal((stop - start, n_factors), dtype=np.float32) @ factors
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
        labels[start:stop] = lab
    return x, labels


def main() -> None:
    """Run the benchmark and write its JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-items", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k items (overrides --n-items)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--sample", type=int, default=200_000, help="k-means fit subsample")
    ap.add_argument("--iters", type=int, default=25, help="max Lloyd iterations per level")
    ap.add_argument(
        "--collisions", default="reassign+suffix", choices=["suffix", "reassign", "reassign+suffix"]
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/...")
    args = ap.parse_args()
    n_items = 100_000 if args.quick else args.n_items
    torch.set_num_threads(args.threads)

    phases: dict[str, float] = {}
    rss: dict[str, float] = {}
    t_all = time.perf_counter()

    def mark(name: str, t0: float) -> None:
        phases[name] = round(time.perf_counter() - t0, 3)
        rss[name] = round(peak_rss_mb(), 1)
        print(f"{name:>12}: {phases[name]:8.2f} s   peak RSS {rss[name]:8.1f} MiB", flush=True)

    t0 = time.perf_counter()
    x, _ = synthetic_catalog(n_items, args.dim, args.seed)
    mark("generate", t0)

    cfg = QuantizerConfig(
        method="rq_kmeans",
        levels=args.levels,
        codebook_size=args.codebook_size,
        seed=args.seed,
        kmeans_iters=args.iters,
        kmeans_sample=args.sample,
    )
    q = build_quantizer("rq_kmeans", cfg)
    t0 = time.perf_counter()
    q.fit(x)
    mark("fit", t0)

    t0 = time.perf_counter()
    codes = q.encode(x)
    mark("encode", t0)

    t0 = time.perf_counter()
    sids, report = resolve_collisions(
        codes,
        method=args.collisions,
        distance_fn=make_distance_fn(q, x, codes),
        codebook_size=args.codebook_size,
    )
    mark("collisions", t0)

    t0 = time.perf_counter()
    diag = code_diagnostics(sids, [args.codebook_size] * args.levels)  # suffix size inferred
    sim = prefix_similarity(x, codes, n_pairs=20_000, seed=args.seed)
    mark("diagnostics", t0)

    # The generation phase is setup, not SID building; the target covers everything anyway.
    seconds_total = round(time.perf_counter() - t_all, 3)
    peak = round(peak_rss_mb(), 1)
    result: dict[str, Any] = {
        "benchmark": "rq_kmeans_1m",
        "n_items": n_items,
        "dim": args.dim,
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "fit_sample": min(args.sample, n_items) if args.sample > 0 else n_items,
        "max_iters": args.iters,
        "collision_method": args.collisions,
        "threads": args.threads,
        "seconds_total": seconds_total,
        "seconds_per_phase": phases,
        "peak_rss_mb": peak,
        "peak_rss_mb_after_phase": rss,
        "collisions_before": report.collisions_before,
        "collision_rate_before": round(report.collision_rate_before, 5),
        "max_group_size_before": report.max_group_size_before,
        "reassigned": report.reassigned,
        "suffix_size": report.suffix_size,
        "collisions_after": report.collisions_after,
        "levels_after": report.levels_after,
        "utilisation_per_level": [round(r["utilisation"], 4) for r in diag["per_level"]],
        "perplexity_per_level": [round(r["perplexity"], 1) for r in diag["per_level"]],
        "prefix_similarity": {k: round(v, 4) for k, v in sim.items()},
        "targets": {"seconds": TARGET_SECONDS, "peak_mb": TARGET_PEAK_MB},
        "pass": {
            "seconds": seconds_total <= TARGET_SECONDS,
            "peak_mb": peak <= TARGET_PEAK_MB,
            "collisions_after": report.collisions_after == 0,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    print(f"{'total':>12}: {seconds_total:8.2f} s   peak RSS {peak:8.1f} MiB")
    print(
        f"collisions {report.collisions_before} ({100 * report.collision_rate_before:.2f}%) → "
        f"{report.collisions_after}; reassigned {report.reassigned}, "
        f"levels {report.levels_before} → {report.levels_after}"
    )
    print(f"pass: {result['pass']}")
    out: Path = args.out or (
        RESULTS.with_name("rq_kmeans_1m_quick.json") if args.quick else RESULTS
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
