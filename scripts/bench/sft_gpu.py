"""GPU check (issue 20): SFT with LoRA and QLoRA on a real-size model, no downloads.

A synthetic run (interaction log → prepared data → random 3-level SIDs → instructions, every
stage of the library, ~20 s) and a "pretrained" model folder built from a config with Qwen2.5's
0.5B shape (hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864; random weights, the
run's local tokenizer; ~0.36B parameters without embeddings). Then ``train_sft`` with
``finetune=lora`` and ``finetune=qlora`` (4-bit NF4 base through bitsandbytes, CUDA only), a few
optimizer steps each: wall time, steps/s, peak GPU memory, first and last training loss, and
whether the adapters load back (``load_sft_model``). The model's shape is what a GPU path has to
handle (bf16 autocast, gradient checkpointing, 4-bit kernels), not what it learns.

Run on a machine with one CUDA GPU (``scripts/gpu_check.sh`` does)::

    python scripts/bench/sft_gpu.py --out benchmarks/results/gpu/sft.json

Exits 1 when a mode fails (the error is in its row) and 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "gpu" / "sft.json"


def synthetic_run(folder: Path, users: int, items: int, per_user: int) -> Path:
    """A run with prepared data, random SIDs and instructions (the base model's tokenizer)."""
    import pandas as pd

    from llmrec.config import load_config
    from llmrec.data import DataConfig, prepare_data
    from llmrec.indexing.build import IndexConfig, build_index

    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", t)
        for u in range(users)
        for t, i in enumerate(rng.choice(items, size=per_user, replace=False))
    ]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    titles = [f"Film number {i}" for i in range(items)]
    pd.DataFrame({"item": [f"i{i}" for i in range(items)], "title": titles}).to_csv(
        folder / "items.csv", index=False
    )
    data_cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={folder / 'log.csv'}",
            f"dataset.item_path={folder / 'items.csv'}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
            "dataset.item_columns={item_id: item}",
        ],
    )
    run = folder / "run"
    prepare_data(data_cfg, run)
    build_index(
        load_config(IndexConfig, None, ["method=random", "quantizer.codebook_size=16"]), run
    )
    return run


def base_model(folder: Path, layers: int) -> tuple[Path, int]:
    """A random model of Qwen2.5-0.5B's shape around a local tokenizer, saved in bf16."""
    import torch

    from llmrec.tokens import build_tiny_model, save_tiny, train_tokenizer

    corpus = [f"Film number {i} is a film about things {i % 7}" for i in range(2000)]
    tokenizer = train_tokenizer(corpus, vocab_size=2000)
    model = build_tiny_model(
        tokenizer,
        hidden_size=896,
        num_layers=layers,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        max_position_embeddings=2048,
    )
    params = sum(p.numel() for p in model.parameters())
    save_tiny(model.to(torch.bfloat16), tokenizer, folder / "base")
    return folder / "base", params


def train(run: Path, base: Path, mode: str, steps: int, batch: int) -> dict[str, Any]:
    """One SFT stage with ``mode``; its figures, or its error."""
    import torch

    from llmrec.config import load_config
    from llmrec.train.config import SFTStageConfig
    from llmrec.train.export import load_sft_model
    from llmrec.train.sft import train_sft

    cfg = load_config(
        SFTStageConfig,
        None,
        [
            f"model={base}",
            f"finetune={mode}",
            "lora.r=16",
            "max_length=256",
            "validation_size=0",
            f"train_samples={steps * batch}",
            f"training.max_steps={steps}",
            f"training.per_device_train_batch_size={batch}",
            "training.learning_rate=0.001",
            "training.warmup_steps=0",
            "training.logging_steps=1",
            "training.save_steps=100000",
            "training.seed=0",
        ],
    )
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    row: dict[str, Any] = {"finetune": mode, "steps": steps, "batch": batch}
    try:
        folder = train_sft(cfg, run, force=True)
        seconds = time.perf_counter() - t0
        metrics = json.loads((folder / "metrics.json").read_text())
        model, _ = load_sft_model(folder)
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        row.update(
            ok=metrics["global_step"] == steps and lora > 0,
            seconds=round(seconds, 1),
            train_runtime_s=round(metrics["train"].get("train_runtime", 0.0), 1),
            steps_per_s=round(metrics["train"].get("train_steps_per_second", 0.0), 2),
            first_loss=metrics["first_loss"],
            last_loss=metrics["last_loss"],
            peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            lora_parameters=lora,
        )
    except Exception as e:
        row.update(ok=False, seconds=round(time.perf_counter() - t0, 1), error=repr(e)[:500])
        traceback.print_exc()
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    """Build, train both modes, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--modes", default="lora,qlora")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("sft_gpu: no CUDA GPU visible; nothing to check here", file=sys.stderr)
        return 2
    from llmrec.config import load_config
    from llmrec.instruct.build import InstructConfig, build_instruct
    from llmrec.io import write_text_atomic

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmrec-sft-gpu-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        base, params = base_model(folder, args.layers)
        run = synthetic_run(folder, users=300, items=400, per_user=20)
        build_instruct(load_config(InstructConfig, None, [f"tokenizer={base}"]), run)
        setup_s = round(time.perf_counter() - t0, 1)
        rows = [train(run, base, m, args.steps, args.batch) for m in args.modes.split(",")]
    summary = {
        "all_ok": all(r.get("ok") for r in rows),
        "model_parameters": params,
        "setup_seconds": setup_s,
        "seconds_total": round(time.perf_counter() - t_all, 1),
        "device": torch.cuda.get_device_name(0),
        **{f"{r['finetune']}_steps_per_s": r.get("steps_per_s") for r in rows},
        **{f"{r['finetune']}_peak_gpu_gb": r.get("peak_gpu_gb") for r in rows},
    }
    print("summary:", json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    write_text_atomic(args.out, json.dumps({**result, "summary": summary}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
