"""Benchmark (issue 18): zero-shot prompting beside the SFT model, Pop and SASRec on ML-100K,
over the full catalog and over 20 candidates, each with its validity rate.

One quickstart run (``llmrec quickstart --run runs/quickstart``) provides the split, the SFT
model, SASRec and the evaluation settings (``<run>/eval/config.yaml``, so SASRec is the one the
quickstart trained). Every model goes through the eval registry (``llmrec.eval.stage.MODELS``)
and ``evaluate`` — the code path of ``llmrec eval models=[zeroshot,sft,pop,sasrec]`` — under two
protocols, test users, seen items excluded:

* ``full``: rank all 1,682 items;
* ``candidates20``: rank the held-out item among 19 sampled unseen items (seeded); every model
  sees only the candidates (the evaluation excludes the rest); zero-shot lists them in its prompt.

Zero-shot uses the only causal LM there is here — the quickstart's tiny model, trained from
scratch on semantic IDs, prompted with *titles* it never saw — decoding under the title trie
(constrained beam search). Its quality is not the point (no pretrained LLM weights can be had
here); its validity (every answer a catalog item) and the harness are. ``random`` is the exact
expectation of a uniformly random ranking of the candidates.

Run (from the repository root)::

    python scripts/bench/zeroshot_ml100k.py --run runs/quickstart     # 943 users; CPU: hours
    python scripts/bench/zeroshot_ml100k.py --run runs/quickstart --max-users 200

Cutoffs are 5 and 10 (``--ks``), so zero-shot decodes K = 10 titles with a beam of 10 over the
full catalog; candidate lists are ranked exactly (every candidate's title log-probability).

Writes ``benchmarks/results/zeroshot_ml100k.json`` (``--out``): one row per model and protocol
(NDCG/Recall/MRR@10 with 95% CIs, invalid@10, validity = 1 - invalid@10, the zero-shot answer
lines' grounding counts), the settings, the machine and the CPU load of other processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "zeroshot_ml100k.json"
MODELS = ("zeroshot", "sft", "pop", "sasrec")
PROTOCOLS = {"full": None, "candidates20": 20}


def cpu_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (Linux ``/proc/stat``)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def random_ndcg(n: int, k: int) -> float:
    """NDCG@k of a uniformly random ranking of ``n`` candidates (the target anywhere)."""
    return sum(1 / math.log2(r + 1) for r in range(1, min(n, k) + 1)) / n


def write_report(
    args: argparse.Namespace,
    cfg: Any,
    rows: list[dict[str, Any]],
    n_items: int,
    start: tuple[float, float, float],
    complete: bool,
) -> None:
    """The JSON report so far (rewritten after every row: a crash keeps what was done)."""
    import torch

    from llmrec.config import to_dict
    from llmrec.io import write_text_atomic

    busy0, own0, wall0 = start
    wall = time.perf_counter() - wall0
    own = time.process_time() - own0
    cpus = os.cpu_count() or 1
    foreign = max(0.0, cpu_busy_seconds() - busy0 - own) / max(wall * cpus, 1e-9)
    report = {
        "benchmark": "zeroshot_ml100k",
        "complete": complete,
        "run_dir": str(args.run),
        "protocol": {
            "part": cfg.protocol.part,
            "exclude_seen": True,
            "max_users": args.max_users,
            "seed": cfg.protocol.seed,
            "ks": cfg.protocol.ks,
        },
        "random": {
            "candidates20": {"ndcg@10": round(random_ndcg(20, 10), 4), "recall@10": 0.5},
            "full": {
                "ndcg@10": round(random_ndcg(n_items, 10), 5),
                "recall@10": round(10 / n_items, 5),
            },
        },
        "zeroshot": to_dict(cfg.zeroshot),
        "rows": rows,
        "wall_seconds": round(wall, 1),
        # CPU time of other processes over the run, as a share of every core (0: alone).
        "foreign_cpu_share": round(foreign, 3),
        "load_average": os.getloadavg(),
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(),
            "cpus": cpus,
            "threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")


def main() -> None:
    """Evaluate every model under both protocols and write the JSON report."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--max-users", type=int, default=None, help="a seeded sample of test users")
    ap.add_argument("--batch-size", type=int, default=16, help="zero-shot prompts per forward")
    ap.add_argument("--ks", default="5,10", help="cutoffs (the largest is the K decoded)")
    ap.add_argument("--models", default=",".join(MODELS), help="registry names, in order")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS), help="full, candidates20")
    ap.add_argument("--num-beams", type=int, default=10, help="zero-shot beam width (≥ K)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    import yaml

    from llmrec.config import build_config
    from llmrec.data.prepare import PreparedData
    from llmrec.eval.protocol import evaluate
    from llmrec.eval.stage import MODELS as REGISTRY
    from llmrec.eval.stage import EvalStageConfig, ModelContext
    from llmrec.run import RunLayout

    layout = RunLayout.of(args.run)
    saved = yaml.safe_load((layout.root / "eval" / "config.yaml").read_text(encoding="utf-8"))
    cfg = build_config(EvalStageConfig, saved, [], " (the quickstart's eval config)")
    cfg.zeroshot = replace(
        cfg.zeroshot, model="sft", batch_size=args.batch_size, num_beams=args.num_beams
    )
    ks = [int(k) for k in args.ks.split(",")]
    cfg.protocol = replace(cfg.protocol, ks=ks, max_users=args.max_users, bootstrap=args.bootstrap)
    prepared = PreparedData.load(layout.root)
    catalog = prepared.items["item_id"].astype(str).tolist()
    ctx = ModelContext(cfg, layout, prepared, force=False)

    rows: list[dict[str, Any]] = []
    busy0, own0, wall0 = cpu_busy_seconds(), time.process_time(), time.perf_counter()
    protocols = {name: PROTOCOLS[name] for name in args.protocols.split(",")}
    models = args.models.split(",")
    for key in models:
        entry = REGISTRY[key]
        rec, train_seconds = entry.build(ctx)
        for protocol, n in protocols.items():
            stats = getattr(rec, "stats", None)
            if stats is not None:
                stats.methods.clear()
                stats.fates.clear()
            start = time.perf_counter()
            protocol_cfg = replace(cfg.protocol, candidates=n)
            result = evaluate(
                rec,
                prepared.split,
                protocol_cfg,
                entry.label(replace(cfg, protocol=protocol_cfg)),
                catalog,
                exclude_seen=True,
            )
            m = result.metrics
            row = {
                "model": result.model,
                "protocol": protocol,
                "candidates": n,
                **{
                    name: round(m[name], 4)
                    for name in m
                    if name.split("_")[0] in ("ndcg@10", "recall@10", "mrr@10")
                },
                "invalid@10": round(m["invalid@10"], 4),
                "validity@10": round(1 - m["invalid@10"], 4),
                "coverage@10": round(m["coverage@10"], 4),
                "n_cases": result.settings["n_cases"],
                "eval_seconds": round(time.perf_counter() - start, 1),
                "train_seconds": round(train_seconds, 1),
            }
            if stats is not None:
                row["answer_lines"] = stats.as_dict()
            rows.append(row)
            print(
                f"{row['model']:<26} {protocol:<13} NDCG@10 {row['ndcg@10']:.4f}  "
                f"Recall@10 {row['recall@10']:.4f}  valid {row['validity@10']:.1%}  "
                f"({row['eval_seconds']:.0f} s)",
                flush=True,
            )
            write_report(args, cfg, rows, len(catalog), (busy0, own0, wall0), complete=False)
    write_report(args, cfg, rows, len(catalog), (busy0, own0, wall0), complete=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
