"""Benchmark (issue 16): preference alignment of the quickstart's SFT model on ML-100K.

Quality: from a finished ``llmrec quickstart`` run (its SFT model), each variant — SFT→GRPO
(beam rollouts), SFT→GRPO (sample rollouts), SFT→DPO — trains on a copy of the run with its
recipe (``recipes/grpo/tiny-cpu.yaml``, ``recipes/dpo/tiny-cpu.yaml``), then every model is
ranked exactly (every item scored through the trie) on the leave-one-out *test* cases, seen items
kept and excluded: NDCG@10, HR@10, HR@50, and the per-user paired difference of NDCG@10 (and
HR@50) to SFT with its 95 % bootstrap CI. The best variant is picked by NDCG@10 on the
*validation* cases (never by test) and trained with two more seeds.

Speed (``--speed``), side by side on the SFT model in one process: completions per second of
constrained beam rollouts, constrained sampling and unconstrained sampling (G = 16 each); reward
computation time per batch of 8 × 16 completions; a GRPO step split into rollout / reward / the
rest (loss, backward, optimizer) from a few timed steps. CPU used by other processes during each
measurement is recorded (``foreign_cpu_share``: 0 = alone, 1 = every core busy elsewhere).

Run (from the repository root, after ``llmrec quickstart --run runs/quickstart``)::

    python scripts/bench/alignment_ml100k.py --base runs/quickstart            # quality
    python scripts/bench/alignment_ml100k.py --base runs/quickstart --speed    # speed only

Every trained model and result is kept under ``--work`` (default ``runs/alignment_ml100k``), so
a rerun (or a run cut short) only redoes what is missing. Writes
``benchmarks/results/alignment_ml100k.json`` (``--tag`` adds a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignment_speed import copy_run, measure  # noqa: E402  (scripts/bench/alignment_speed.py)

from llmrec.config import load_config  # noqa: E402
from llmrec.data.prepare import PreparedData  # noqa: E402
from llmrec.eval.metrics import bootstrap_ci  # noqa: E402
from llmrec.eval.protocol import EvalConfig, EvalResult, evaluate  # noqa: E402
from llmrec.io import write_text_atomic  # noqa: E402
from llmrec.recommend.loading import load  # noqa: E402

GOAL_NDCG10 = 0.06  # seen items kept (OpenP5-S 0.0595, RecBole GRU4Rec 0.0594, SASRec 0.0585)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "SFT→GRPO (beam)": ("grpo", "recipes/grpo/tiny-cpu.yaml", ["rollout.mode=beam"]),
    "SFT→GRPO (sample)": ("grpo", "recipes/grpo/tiny-cpu.yaml", ["rollout.mode=sample"]),
    "SFT→DPO": ("dpo", "recipes/dpo/tiny-cpu.yaml", []),
}
SEEDS = (42, 43, 44)


class CpuMeter:
    """CPU seconds of other processes over an interval, as a share of all cores."""

    def __enter__(self) -> CpuMeter:
        self.busy0, self.own0, self.t0 = _busy(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        foreign = (_busy() - self.busy0 - own) / max(wall * (os.cpu_count() or 1), 1e-9)
        # own CPU seconds: close to the wall time on a quiet machine with one thread.
        self.seconds, self.foreign, self.cpu_seconds = wall, max(0.0, foreign), own


def _busy() -> float:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def evaluated(run: Path, stage: str, cache: Path, max_users: int | None) -> dict[str, Any]:
    """Validation NDCG@10 and test results (HR and NDCG at 10 and 50, exact full ranking) of a
    trained stage, cached in ``cache``. One recommender serves all three evaluations: its exact
    scores are remembered per history, so the test with seen items excluded costs nothing."""
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    rec = load(run, stage, mode="exact", batch_size=16, progress=True)
    prepared = PreparedData.load(run)
    catalog = prepared.items["item_id"].astype(str).tolist()

    def rank(part: str, exclude: bool) -> EvalResult:
        cfg = EvalConfig(ks=[10, 50], part=part, bootstrap=1000, max_users=max_users)
        return evaluate(rec, prepared.split, cfg, stage, catalog, exclude_seen=exclude)

    out: dict[str, Any] = {"valid_ndcg@10": rank("valid", False).metrics["ndcg@10"]}
    for exclude in (False, True):
        result = rank("test", exclude)
        key = "excluded" if exclude else "kept"
        out[key] = result.metrics
        out[f"{key}_per_user"] = result.per_user[["user_id", "ndcg@10", "recall@50"]].to_dict(
            "list"
        )
    write_text_atomic(cache, json.dumps(out) + "\n")
    return out


def paired(model: dict[str, Any], sft: dict[str, Any], metric: str) -> tuple[float, ...]:
    """Mean per-user difference to SFT and its 95 % bootstrap CI."""
    assert model["user_id"] == sft["user_id"], "users differ"
    diff = np.asarray(model[metric]) - np.asarray(sft[metric])
    low, high = bootstrap_ci(diff, 2000, seed=0)
    return float(diff.mean()), low, high


def train_variant(
    base: Path, work: Path, name: str, seed: int, extra: list[str]
) -> tuple[Path, str, dict[str, float]]:
    """Train one variant on a copy of the base run (skipped when done); its run, stage, times."""
    from llmrec.train.align_config import DPOStageConfig, GRPOStageConfig
    from llmrec.train.dpo import train_dpo
    from llmrec.train.grpo import train_grpo

    stage, recipe, overrides = VARIANTS[name]
    run = work / f"{stage}-{overrides[0].split('=')[1] if overrides else 'pairs'}-s{seed}"
    timing = run / "bench_train.json"
    if timing.is_file():
        return run, stage, dict(json.loads(timing.read_text()))
    shutil.rmtree(run, ignore_errors=True)
    copy_run(base, run)
    cls, train = (GRPOStageConfig, train_grpo) if stage == "grpo" else (DPOStageConfig, train_dpo)
    cfg: Any = load_config(cls, ROOT / recipe, [*overrides, *extra, f"training.seed={seed}"])
    with CpuMeter() as meter:
        train(cfg, run)
    info = {
        "train_seconds": meter.seconds,
        "train_cpu_seconds": meter.cpu_seconds,
        "foreign_cpu_share": meter.foreign,
    }
    write_text_atomic(timing, json.dumps(info) + "\n")
    return run, stage, info


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Rows for SFT and every variant (the best by validation over three seeds)."""
    args.work.mkdir(parents=True, exist_ok=True)
    sft = evaluated(args.base, "sft", args.work / "sft.json", args.max_users)
    sft_seconds = json.loads((args.base / "sft" / "metrics.json").read_text())["train"][
        "train_runtime"
    ]
    results: list[tuple[str, int, dict[str, Any], dict[str, float]]] = [
        ("SFT", 42, sft, {"train_seconds": sft_seconds})
    ]
    for name in args.variants:
        run, stage, times = train_variant(args.base, args.work, name, SEEDS[0], args.set)
        results.append(
            (name, SEEDS[0], evaluated(run, stage, run / "bench.json", args.max_users), times)
        )
    best = max(results[1:], key=lambda r: r[2]["valid_ndcg@10"])[0] if args.variants else None
    if best is not None:
        for seed in SEEDS[1 : args.seeds]:
            run, stage, times = train_variant(args.base, args.work, best, seed, args.set)
            results.append(
                (best, seed, evaluated(run, stage, run / "bench.json", args.max_users), times)
            )
    rows = []
    for name, seed, res, times in results:
        for key in ("kept", "excluded"):
            m = res[key]
            d, lo, hi = paired(res[f"{key}_per_user"], sft[f"{key}_per_user"], "ndcg@10")
            d50, lo50, hi50 = paired(res[f"{key}_per_user"], sft[f"{key}_per_user"], "recall@50")
            rows.append(
                {
                    "model": name,
                    "seed": seed,
                    "exclude_seen": key == "excluded",
                    "ndcg@10": m["ndcg@10"],
                    "hr@10": m["recall@10"],
                    "hr@50": m["recall@50"],
                    "delta_ndcg@10": d,
                    "delta_ci_low": lo,
                    "delta_ci_high": hi,
                    "delta_hr@50": d50,
                    "delta_hr@50_ci_low": lo50,
                    "delta_hr@50_ci_high": hi50,
                    "valid_ndcg@10": res["valid_ndcg@10"],
                    "train_seconds": round(times["train_seconds"], 1),
                    "train_cpu_seconds": round(times.get("train_cpu_seconds", float("nan")), 1),
                    "train_foreign_cpu_share": times.get("foreign_cpu_share"),
                }
            )
    aligned = [r for r in rows if r["model"] != "SFT" and not r["exclude_seen"]]
    summary = {
        "best_by_validation": best,
        "ci_above_zero": sorted({r["model"] for r in aligned if r["delta_ci_low"] > 0}),
        "hr@50_not_lower_beyond_ci": sorted(
            {r["model"] for r in aligned if r["delta_hr@50_ci_high"] >= 0}
        ),
        "best_ndcg@10_kept": max((r["ndcg@10"] for r in aligned), default=None),
        "goal_ndcg@10_kept": GOAL_NDCG10,
    }
    for key in ("kept", "excluded"):
        seeds = [r for r in rows if r["model"] == best and r["exclude_seen"] == (key == "excluded")]
        if seeds:
            summary[f"best_over_seeds_{key}"] = {
                "seeds": [r["seed"] for r in seeds],
                **{
                    m: float(np.mean([r[m] for r in seeds]))
                    for m in ("ndcg@10", "hr@10", "hr@50", "delta_ndcg@10", "delta_hr@50")
                },
                "ndcg@10_sd": float(np.std([r["ndcg@10"] for r in seeds], ddof=1))
                if len(seeds) > 1
                else None,
            }
    summary["goal_reached"] = bool(
        summary["ci_above_zero"] and (summary["best_ndcg@10_kept"] or 0) >= GOAL_NDCG10
    )
    return {"rows": rows, "summary": summary}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Rollout, reward and GRPO-step timings on the SFT model (see the module docstring)."""
    return measure(args.base, args.work / "speed", CpuMeter, reps=args.reps)


def main() -> None:
    """Run the requested parts and write the JSON report."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--base", type=Path, default=ROOT / "runs" / "quickstart")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "alignment_ml100k")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the best variant")
    ap.add_argument("--speed", action="store_true", help="the speed part only")
    ap.add_argument("--reps", type=int, default=3, help="speed: repetitions of each timing")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every variant"
    )
    ap.add_argument("--max-users", type=int, help="evaluate a seeded sample of users (smoke)")
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    torch.manual_seed(0)
    report: dict[str, Any] = {"benchmark": "alignment_ml100k", "base_run": str(args.base)}
    name = "alignment_ml100k" + (f"_{args.tag}" if args.tag else "") + ".json"
    path = ROOT / "benchmarks" / "results" / name
    if path.is_file():  # keep the other part of an earlier run
        report = {**json.loads(path.read_text()), **report}
    load0 = os.getloadavg()
    if args.speed:
        report["speed"] = speed(args)
    else:
        report.update(quality(args))
        report["recipes"] = {n: {"recipe": r, "overrides": o} for n, (_, r, o) in VARIANTS.items()}
        report["overrides"] = args.set
    report["machine"] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    print(json.dumps(report.get("summary", report.get("speed")), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
