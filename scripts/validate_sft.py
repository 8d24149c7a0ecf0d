"""Constrained validation Recall/NDCG@10 of a run's SFT model next to an untrained model of the
same shape, on the same seeded validation users (beam and exact decoding).

    python scripts/validate_sft.py --run runs/ml100k [--users 200]

Writes benchmarks/results/validate_sft.json. This is the issue-7 check that training moves the
constrained validation metrics above the untrained model's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from llmrec.io import write_json_atomic
from llmrec.recommend.loading import load_model
from llmrec.tokens import build_tiny_model
from llmrec.train.config import ValidationSection
from llmrec.train.validation import make_validation_fn

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Evaluate trained vs untrained, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/ml100k")
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model(args.run, "sft")
    cfg = model.config
    untrained = build_tiny_model(
        tokenizer,
        arch=cfg.model_type,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        seed=0,
    )
    rows = []
    for mode in ("beam", "exact"):
        section = ValidationSection(users=args.users, mode=mode)  # type: ignore[arg-type]
        validate = make_validation_fn(args.run, section)
        for name, m in (("untrained", untrained), ("trained", model)):
            start = time.perf_counter()
            metrics = validate(m.eval(), tokenizer)
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    **metrics,
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "validate_sft.json"
    write_json_atomic(out, {"run": str(args.run), "users": args.users, "rows": rows})
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
