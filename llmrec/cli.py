"""The ``llmrec`` command: ``llmrec <stage> <verb> --run runs/<name> [--config F] [key=value ...]``.

Each verb parses a typed config (YAML file, then dotted overrides) and calls one library
function; no logic lives here. The verbs are a table (``VERBS``): one row each, with the
config class whose keys its ``--help`` lists.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.config import iter_help, load_config
from llmrec.console import quiet_upstream
from llmrec.errors import UserError, missing_extra

logger = logging.getLogger("llmrec")

DEFAULT_RUN = "runs/ml100k"
Command = Callable[[argparse.Namespace], int]


def _config_epilog(cls: type) -> str:
    rows = [f"  {key} (default {default})\n      {text}" for key, default, text in iter_help(cls)]
    return "config keys (set in --config YAML or as key=value overrides):\n" + "\n".join(rows)


def _symbol(path: str) -> object:
    """``module:attribute`` imported."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _done(folder: Path, start: float, what: str) -> str:
    """'wrote …' when the stage was built by this command, else that it was up to date."""
    marker = folder / "_DONE.json"
    if marker.is_file() and marker.stat().st_mtime >= start:
        return f"\nwrote {folder}/ ({what})"
    return f"\n{folder}/ is up to date (settings and inputs unchanged): skipped; --force redoes it"


# ---- commands --------------------------------------------------------------------------------


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """llmrec data prepare."""
    from llmrec.data.prepare import DataConfig, prepare_data, summary

    overrides = [f"dataset.name={args.dataset}"] if args.dataset else []
    overrides += [f"dataset.path={args.path}"] if args.path else []
    cfg = load_config(DataConfig, args.config, overrides + list(args.overrides))
    start = time.time()
    prepared = prepare_data(cfg, args.run, force=args.force)
    print(summary(prepared))
    print(_done(prepared.path, start, "split.parquet, items.parquet, events.parquet, stats.json"))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    """llmrec data stats."""
    from llmrec.data.prepare import PreparedData, summary

    print(summary(PreparedData.load(args.run)))
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    """llmrec index build."""
    import json

    from llmrec.indexing.build import IndexConfig, build_index, format_report

    cfg = load_config(IndexConfig, args.config, args.overrides)
    start = time.time()
    folder = build_index(cfg, args.run, force=args.force)
    print(format_report(json.loads((folder / "diagnostics.json").read_text())))
    print(_done(folder, start, "sid_map.json, diagnostics.json"))
    return 0


def cmd_instruct_build(args: argparse.Namespace) -> int:
    """llmrec instruct build."""
    from llmrec.instruct.build import InstructConfig, build_instruct, format_summary

    cfg = load_config(InstructConfig, args.config, args.overrides)
    start = time.time()
    folder = build_instruct(cfg, args.run, force=args.force)
    print(format_summary(folder))
    print(_done(folder, start, "DatasetDict train/validation/test, tokenizer/"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """llmrec train <trainer>: the same entry as ``python -m llmrec.train.<trainer>``."""
    from llmrec.train import TRAINERS
    from llmrec.train.stage import stage_main

    config_path, train_path, _ = TRAINERS[args.verb]
    return stage_main(args, _symbol(config_path), _symbol(train_path))  # type: ignore[arg-type]


def cmd_export(args: argparse.Namespace) -> int:
    """llmrec export."""
    from llmrec.train.export import export_model

    start = time.time()
    folder = export_model(args.run, args.stage, args.out, dtype=args.dtype, force=args.force)
    print(_done(folder, start, "merged HF checkpoint, tokenizer, sid_map.json"))
    print("load it with AutoModelForCausalLM.from_pretrained or vLLM")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """llmrec eval."""
    from llmrec.eval.report import results_table
    from llmrec.eval.stage import EvalStageConfig, run_eval

    cfg = load_config(EvalStageConfig, args.config, args.overrides)
    start = time.time()
    rows = run_eval(cfg, args.run, force=args.force)
    k = 10 if 10 in cfg.protocol.ks else cfg.protocol.ks[0]
    print(results_table(rows, k))
    print(_done(Path(args.run) / "eval", start, "results.json, table.txt, plot.png, per-user"))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """llmrec recommend: one user's (or one history's) top-k with titles."""
    from llmrec.recommend.loading import load
    from llmrec.recommend.lookup import recommend_for

    history = [i.strip() for i in args.history.split(",") if i.strip()] if args.history else None
    rec = load(args.run, args.stage, mode=args.mode, num_beams=args.num_beams)
    found = recommend_for(
        args.run,
        rec,
        user_id=args.user,
        history=history,
        k=args.k,
        rule=args.history_rule,
        exclude_seen=not args.keep_seen,
    )
    print(found.format())
    return 0


def cmd_zeroshot_recommend(args: argparse.Namespace) -> int:
    """llmrec zeroshot recommend."""
    from llmrec.zeroshot.build import show_user
    from llmrec.zeroshot.config import ZeroShotRecommendConfig

    overrides = [f"model={args.model}"] if args.model else []
    cfg = load_config(ZeroShotRecommendConfig, args.config, overrides + list(args.overrides))
    print(show_user(args.run, cfg))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """llmrec serve."""
    from llmrec.serve.server import ServeConfig, serve

    cfg = load_config(ServeConfig, args.config, args.overrides)
    run = args.run if args.run or args.model else DEFAULT_RUN
    serve(cfg, run, args.model)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """llmrec quickstart: the whole pipeline on the embedded default dataset (ML-100K)."""
    from llmrec.quickstart import run_quickstart

    run_quickstart(args.run, force=args.force, overrides=args.overrides, recipe=args.config)
    return 0


# ---- the verb table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verb:
    """One ``llmrec <stage> [<verb>]`` command."""

    stage: str
    verb: str | None
    help: str
    description: str
    command: Command
    config: str | None = None  # "module:Class" whose keys --help lists
    arguments: Callable[[argparse.ArgumentParser], None] | None = None  # else the common ones
    run_default: str = DEFAULT_RUN


def add_common(parser: argparse.ArgumentParser, run_default: str = DEFAULT_RUN) -> None:
    """``--run``, ``--config``, ``--force`` and ``key=value`` overrides."""
    parser.add_argument("--run", default=run_default, help=f"run directory (default {run_default})")
    parser.add_argument("--config", type=Path, help="YAML config file (see recipes/)")
    parser.add_argument(
        "--force", action="store_true", help="redo the stage even if it finished already"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. filters.min_user_interactions=5",
    )


def _prepare_args(parser: argparse.ArgumentParser) -> None:
    from llmrec.data.prepare import DATASETS

    parser.add_argument("--dataset", choices=DATASETS, help="shortcut for dataset.name=...")
    parser.add_argument("--path", help="shortcut for dataset.path=...")
    add_common(parser)


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=DEFAULT_RUN, help="run directory")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from llmrec.train.stage import add_stage_arguments

    add_stage_arguments(parser)


def _export_args(parser: argparse.ArgumentParser) -> None:
    from llmrec.run import TRAINED

    parser.add_argument("--run", default=DEFAULT_RUN, help="run directory")
    parser.add_argument("--stage", default="sft", choices=TRAINED, help="which trained stage")
    parser.add_argument("--out", help="output folder (default <run>/export/<stage>)")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: as trained"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")


def _recommend_args(parser: argparse.ArgumentParser) -> None:
    from llmrec.recommend.base import DEFAULT_BEAMS
    from llmrec.run import TRAINED

    parser.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id of the run's data")
    who.add_argument("--history", help="item ids, oldest first, comma-separated")
    parser.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--stage", choices=TRAINED, help="trained stage (default: the newest)")
    parser.add_argument(
        "--history-rule",
        choices=["all", "test", "valid"],
        default="all",
        help="a known user's interactions to use: all (default, as the server), or those before "
        "the held-out test item (as evaluation: the held-out item can then be found)",
    )
    parser.add_argument(
        "--mode",
        choices=["beam", "exact"],
        default="beam",
        help="constrained beam search (default, as the server) or exact full ranking",
    )
    parser.add_argument("--num-beams", type=int, default=DEFAULT_BEAMS, help="beam width")
    parser.add_argument("--keep-seen", action="store_true", help="allow items of the history")


def _zeroshot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    parser.add_argument(
        "--model",
        help="a trained stage of the run (llm: the newest), a model folder or hub name, or the "
        "served model's name with backend=openai (shortcut for model=...)",
    )
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. user_id=42 k=10 candidates=20 backend=openai",
    )


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", help=f"run directory (default: the run --model came from, else {DEFAULT_RUN})"
    )
    parser.add_argument("--model", help="model folder (default: the run's servable model)")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. port=8080 backend=hf"
    )


def _verbs() -> list[Verb]:
    from llmrec.train import TRAINERS

    verbs = [
        Verb(
            "quickstart",
            None,
            "run the pipeline end to end on ML-100K",
            "The whole pipeline on the embedded default dataset (ML-100K): prepare it, build "
            "semantic IDs and instruction datasets, train a tiny model from scratch, evaluate it "
            "beside Pop and SASRec on the same split (table + plot), and show one user's top-10 "
            "with titles. Settings: recipes/quickstart.yaml (--config another); overrides are "
            "<stage>.<key>=<value>, stage one of data, index, instruct, sft, eval. Finished "
            "stages are skipped.",
            cmd_quickstart,
            run_default="runs/quickstart",
        ),
        Verb(
            "data",
            "prepare",
            "load, filter and split a dataset into <run>/data",
            "Load a dataset, apply filters, split chronologically and write <run>/data/.",
            cmd_data_prepare,
            "llmrec.data.prepare:DataConfig",
            _prepare_args,
        ),
        Verb(
            "data",
            "stats",
            "print the statistics of a prepared run",
            "Print <run>/data/stats.json as a summary.",
            cmd_data_stats,
            None,
            _stats_args,
        ),
        Verb(
            "index",
            "build",
            "build the run's SemanticIdMap into <run>/sids",
            "Embed item texts, quantize them into collision-free codes and write <run>/sids/.",
            cmd_index_build,
            "llmrec.indexing.build:IndexConfig",
        ),
        Verb(
            "instruct",
            "build",
            "render train/validation/test into <run>/instruct",
            "Render the data_templates/ tasks over the run's split and SIDs into a DatasetDict, "
            "and add every SID token to the tokenizer (checked by a round trip).",
            cmd_instruct_build,
            "llmrec.instruct.build:InstructConfig",
        ),
    ]
    for name, (config, _, description) in TRAINERS.items():
        module = TRAINERS[name][1].partition(":")[0]
        verbs.append(
            Verb(
                "train",
                name,
                description.split(".")[0],
                f"{description} Many processes: accelerate launch --config_file "
                f"recipes/accelerate/<profile>.yaml -m {module} --run-dir <run> --config ...",
                cmd_train,
                config,
                _train_args,
            )
        )
    verbs += [
        Verb(
            "export",
            None,
            "merge a trained stage into a plain HF checkpoint (vLLM loads it)",
            "Merge a trained stage's model (LoRA into its base, SID rows included) into one HF "
            "checkpoint with tokenizer and SID map, in <run>/export/<stage>/.",
            cmd_export,
            None,
            _export_args,
        ),
        Verb(
            "eval",
            None,
            "evaluate the run's models beside Pop and SASRec",
            "Full-ranking evaluation on the run's split: trained models (constrained decoding), "
            "Pop and SASRec by the same code path, seen items kept and excluded; prints a "
            "side-by-side table and saves <run>/eval/ (JSON, plot).",
            cmd_eval,
            "llmrec.eval.stage:EvalStageConfig",
        ),
        Verb(
            "recommend",
            None,
            "a user's top-k with titles, from the run's trained model",
            "One known user's recommendations (their history under --history-rule) or an "
            "explicit history's, with titles and scores, what they watched last and, for a test "
            "user, the held-out item: the answer the server gives for the same user, rule and "
            "decoding.",
            cmd_recommend,
            None,
            _recommend_args,
        ),
        Verb(
            "zeroshot",
            "recommend",
            "one user's top-K from a prompted LLM, grounded to real items",
            "Prompt an LLM (local HF or vLLM model, or an OpenAI-compatible endpoint: base URL "
            "and key from OPENAI_BASE_URL / OPENAI_API_KEY) with a test user's history from "
            "prompts/, and print the prompt, each answer line with the item it was grounded to "
            "(trie, exact, fuzzy, embedding or none) and the top-K beside the held-out item.",
            cmd_zeroshot_recommend,
            "llmrec.zeroshot.config:ZeroShotRecommendConfig",
            _zeroshot_args,
        ),
        Verb(
            "serve",
            None,
            "serve the run's model over HTTP (HF or vLLM)",
            "POST /v1/recommend (a user id or a history → items with titles and scores, only "
            "ever catalog items), GET /health, OpenAPI at /docs. Needs pip install "
            "'llmrec[serve]'; the vLLM backend needs vLLM in its own environment (README).",
            cmd_serve,
            "llmrec.serve.server:ServeConfig",
            _serve_args,
        ),
    ]
    return verbs


DESCRIPTION = """\
llmrec: generative recommendation with LLMs.

Stages write into one run directory, each its own subfolder:
  data      load interactions, filter, split          → <run>/data/
  index     semantic IDs for every item               → <run>/sids/
  instruct  instruction datasets + SID tokenizer      → <run>/instruct/
  train     sft (full, LoRA, QLoRA), then alignment   → <run>/<trainer>/
  export    merge a trained stage into one checkpoint → <run>/export/<stage>/
  eval      trained models beside Pop and SASRec      → <run>/eval/
  recommend one user's top-k with titles
  zeroshot  a prompted LLM's picks, grounded to items
  serve     the run's model over HTTP (HF or vLLM)
Start with `llmrec quickstart`, or `llmrec data prepare --run runs/ml100k`."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="llmrec", description=DESCRIPTION, formatter_class=fmt)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    stages = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for verb in _verbs():
        epilog = _config_epilog(_symbol(verb.config)) if verb.config else None  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {
            "help": verb.help,
            "description": verb.description,
            "epilog": epilog,
        }
        if verb.verb is None:
            sub = stages.add_parser(verb.stage, formatter_class=fmt, **kwargs)
        else:
            if verb.stage not in groups:
                group = stages.add_parser(verb.stage, help=f"{verb.stage} verbs")
                groups[verb.stage] = group.add_subparsers(
                    dest="verb", metavar="<verb>", required=True
                )
            sub = groups[verb.stage].add_parser(verb.verb, formatter_class=fmt, **kwargs)
        if verb.arguments is not None:
            verb.arguments(sub)
        else:
            add_common(sub, verb.run_default)
        sub.set_defaults(func=verb.command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmrec`` command."""
    args = build_parser().parse_args(argv)
    quiet_upstream(args.verbose)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Command = args.func
    # Only user mistakes become one line; anything else is a bug and keeps its traceback.
    try:
        return func(args)
    except UserError as err:
        return _report(err, err, args.verbose)
    except ModuleNotFoundError as err:
        extra = missing_extra(err, f"llmrec {args.stage}")
        if extra is None:
            raise
        return _report(extra, err, args.verbose)


def _report(err: UserError, cause: BaseException, verbose: bool) -> int:
    """Print a user error as one line (after its traceback under -v); exit status 2."""
    if verbose:
        traceback.print_exception(cause)
    print(f"llmrec: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
