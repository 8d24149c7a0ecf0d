"""Benchmark: prepare a synthetic 10M-interaction log (load CSV, dedup, 5-core, split, write).

Targets on a 2-core machine: ≤ 60 s and ≤ 4 GB peak memory for 10M interactions.

    python scripts/bench/data_prepare.py            # 10M interactions
    python scripts/bench/data_prepare.py --quick    # 1M, for a smoke run

The log is generated first (not timed) as a CSV with string ids, then ``llmrec data prepare``'s
library function runs in a fresh child process, so its peak RSS is the stage's own. Prints the
figures and writes ``benchmarks/results/data_prepare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "data_prepare.json"


def generate(path: Path, n: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """A power-law-ish log: popular items and heavy users, with repeats and equal timestamps."""
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.5, n) * n_users / 20).astype(np.int64) % n_users
    items = (rng.zipf(1.3, n) + rng.integers(0, n_items, n) // 50) % n_items
    ts = 1_500_000_000 + rng.integers(0, 50_000_000, n) // 10 * 10
    ratings = rng.integers(1, 6, n)
    table = pa.table(
        {
            "user": pa.array(np.char.add("u", users.astype(str))),
            "item": pa.array(np.char.add("i", items.astype(str))),
            "ts": ts,
            "rating": ratings,
        }
    )
    pacsv.write_csv(table, path)


def child(csv: str, run: str) -> None:
    """The measured part, in its own process: the full data stage."""
    from llmrec.config import load_config
    from llmrec.data import DataConfig, prepare_data

    cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={csv}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts, rating: rating}",
            "filters.dedup=first",
            "filters.min_user_interactions=5",
            "filters.min_item_interactions=5",
        ],
    )
    start = time.perf_counter()
    prepared = prepare_data(cfg, run, force=True)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "stats": prepared.stats}))


def main() -> None:
    """Generate, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="interactions")
    parser.add_argument("--quick", action="store_true", help="1M interactions")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    n = 1_000_000 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "log.csv"
        t0 = time.perf_counter()
        generate(csv, n, n_users=max(1000, n // 20), n_items=max(500, n // 100))
        gen_s = time.perf_counter() - t0
        size_mb = csv.stat().st_size / 1e6
        print(f"generated {n:,} interactions ({size_mb:.0f} MB CSV) in {gen_s:.1f} s")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(csv), str(Path(tmp) / "run")],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    stats = result["stats"]
    row = {
        "interactions_in": n,
        "csv_mb": round(size_mb, 1),
        "seconds": round(result["seconds"], 2),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "users_after": stats["users"],
        "items_after": stats["items"],
        "interactions_after": stats["interactions"],
        "filters": stats["filters"],
    }
    targets = {"seconds": 60, "peak_rss_mb": 4096}
    report = {
        "benchmark": "data_prepare",
        "what": "CSV load + dedup(first) + 5-core + leave-one-out split + parquet/json writes",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": [row],
        "targets": targets,
        "pass": {k: row[k] <= v for k, v in targets.items()} if n >= 10_000_000 else None,
    }
    print(
        f"prepared {n:,} interactions in {row['seconds']:.1f} s, peak RSS "
        f"{row['peak_rss_mb']:.0f} MB (targets: ≤ 60 s, ≤ 4096 MB)"
    )
    print(
        f"after filters: {row['users_after']:,} users, {row['items_after']:,} items, "
        f"{row['interactions_after']:,} interactions"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
