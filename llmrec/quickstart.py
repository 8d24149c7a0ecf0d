"""The whole pipeline on the embedded default dataset (ML-100K), as ``llmrec quickstart`` runs it.

data → semantic IDs → instructions → SFT of a tiny model from scratch → evaluation beside Pop
and SASRec on the same split → one user's top-10 with titles. Every stage writes into the run
directory and is skipped when it already finished with the same config, so a second run only
re-prints. The settings live in ``recipes/quickstart.yaml`` (one section per stage), packaged
with llmrec so that the command works from an installed wheel as well as from a clone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

SECTIONS = ("data", "index", "instruct", "sft", "eval")

NEXT_STEPS = """
next:
  llmrec recommend --run {run} --user {user}        # a user's top-10 (all their history)
  pip install -e '.[serve]' && llmrec serve --run {run}    # HTTP on 127.0.0.1:8000
  curl -s -X POST localhost:8000/v1/recommend -H 'content-type: application/json' \\
       -d '{{"user_id": "{user}", "k": 5}}'"""


def recipes_dir() -> Path:
    """``recipes/`` of a source checkout, else the copy packaged inside llmrec."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "recipes", here / "_recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no recipes/ folder found beside llmrec or inside it")


def load_plan(path: Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Each stage's config from the quickstart recipe; ``overrides`` are ``stage.key=value``."""
    from llmrec.config import ConfigError, build_config
    from llmrec.data.prepare import DataConfig
    from llmrec.eval.stage import EvalStageConfig
    from llmrec.indexing.build import IndexConfig
    from llmrec.instruct.build import InstructConfig
    from llmrec.train.config import SFTStageConfig

    path = path or recipes_dir() / "quickstart.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    threads = raw.pop("threads", None)
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown sections {sorted(unknown)}; use threads and {list(SECTIONS)}"
        )
    per_stage: dict[str, list[str]] = {s: [] for s in SECTIONS}
    for item in overrides:
        if item.startswith("threads="):
            threads = yaml.safe_load(item.partition("=")[2])
            continue
        stage, _, rest = item.partition(".")
        if stage not in per_stage or not rest:
            raise ConfigError(
                f"override {item!r}: write <stage>.<key>=<value>, stage one of {list(SECTIONS)}"
            )
        per_stage[stage].append(rest)
    classes = {
        "data": DataConfig,
        "index": IndexConfig,
        "instruct": InstructConfig,
        "sft": SFTStageConfig,
        "eval": EvalStageConfig,
    }
    plan: dict[str, Any] = {
        s: build_config(cls, raw.get(s) or {}, per_stage[s], f" (from {path}, {s}:)")
        for s, cls in classes.items()
    }
    from llmrec.train.sft import check_config

    check_config(plan["sft"])  # before minutes of earlier stages, not after
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"threads must be a positive integer or null, got {threads!r}", field="threads"
        )
    plan["threads"] = threads
    return plan


def run_quickstart(
    run: str | Path,
    force: bool = False,
    overrides: Sequence[str] = (),
    recipe: Path | None = None,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every stage into ``run`` and report as it goes; returns the evaluation rows."""
    import torch

    run = Path(run)
    plan = load_plan(recipe, overrides)
    threads = torch.get_num_threads()
    if plan["threads"]:
        torch.set_num_threads(plan["threads"])
    try:
        return _run_stages(run, plan, force, say)
    finally:
        torch.set_num_threads(threads)


def _run_stages(
    run: Path, plan: dict[str, Any], force: bool, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    from llmrec.data.prepare import prepare_data, summary
    from llmrec.eval.report import results_table
    from llmrec.eval.stage import run_eval
    from llmrec.indexing.build import build_index, format_report
    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.instruct.build import build_instruct
    from llmrec.instruct.build import format_summary as instruct_summary
    from llmrec.recommend.loading import load
    from llmrec.recommend.lookup import recommend_for
    from llmrec.train.sft import train_sft
    from llmrec.train.stage import format_summary as sft_summary

    start = time.perf_counter()

    def stage(n: int, text: str) -> None:
        say(f"\n[{n}/6] {text}  (at {time.perf_counter() - start:.0f} s)")

    stage(1, f"data: preparing ML-100K into {run}/data")
    prepared = prepare_data(plan["data"], run, force=force)
    say(summary(prepared))
    stage(2, f"index: semantic IDs from item-text embeddings into {run}/sids")
    folder = build_index(plan["index"], run, force=force)
    say(format_report(json.loads((folder / "diagnostics.json").read_text())))
    sid_map = SemanticIdMap.load(folder / "sid_map.json")
    titles = prepared.items.set_index("item_id")["title"]
    for item in sid_map.item_ids[:3]:
        say(f"  {sid_map.sid(item)}  {titles.get(item, item)}")
    stage(3, f"instruct: instruction datasets and SID tokenizer into {run}/instruct")
    say(instruct_summary(build_instruct(plan["instruct"], run, force=force)))
    stage(4, f"train: SFT of a tiny model from scratch into {run}/sft")
    say(sft_summary(train_sft(plan["sft"], run, force=force)))
    stage(5, f"eval: the model beside Pop and SASRec on the same split into {run}/eval")
    rows = run_eval(plan["eval"], run, force=force)
    k = 10 if 10 in plan["eval"].protocol.ks else plan["eval"].protocol.ks[0]
    say(results_table(rows, k))
    say(f"plot: {run}/eval/plot.png")
    stage(6, "a test user's top-10 from the trained model (seen items excluded)")
    ecfg = plan["eval"]
    rec = load(run, "sft", mode=ecfg.llm_mode, num_beams=ecfg.num_beams, batch_size=ecfg.batch_size)
    user = str(prepared.split.cases("test")["user_id"].iloc[0])
    # The evaluation's history rule: the interactions before the held-out item, which can then
    # turn up in the list.
    say(recommend_for(run, rec, user_id=user, k=10, rule="test").format())
    say(f"\ndone in {time.perf_counter() - start:.0f} s; rerun to skip every finished stage")
    say(NEXT_STEPS.format(run=run, user=user))
    return rows
