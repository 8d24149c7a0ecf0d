"""The evaluation notebook runs top to bottom on a tiny run's artifacts (as CI executes it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.config import load_config
from llmrec.data import DataConfig, prepare_data
from llmrec.eval.stage import EvalStageConfig, run_eval

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "evaluate.ipynb"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nb")
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{int(i)}", t)
        for u in range(30)
        for t, i in enumerate(rng.zipf(1.5, size=8) % 40)
    ]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(folder / "log.csv", index=False)
    cfg = load_config(
        DataConfig,
        None,
        [
            "dataset.name=tabular",
            f"dataset.path={folder / 'log.csv'}",
            "dataset.columns={user_id: user, item_id: item, timestamp: ts}",
        ],
    )
    prepare_data(cfg, folder / "run")
    return folder / "run"


def test_eval_stage_writes_table_plot_and_rows(run: Path) -> None:
    cfg = load_config(EvalStageConfig, None, ["models=[pop]", "protocol.bootstrap=50"])
    rows = run_eval(cfg, run)
    assert [(r["model"], r["exclude_seen"]) for r in rows] == [("Pop", False), ("Pop", True)]
    for name in (
        "results.json",
        "table.txt",
        "plot.png",
        "pop_kept.json",
        "pop_excl.per_user.parquet",
    ):
        assert (run / "eval" / name).exists(), name
    assert "Recall@10" in (run / "eval" / "table.txt").read_text()


def test_vllm_backend_needs_beam_mode(run: Path) -> None:
    from llmrec.config import ConfigError
    from llmrec.eval.stage import run_eval

    cfg = load_config(EvalStageConfig, None, ["llm_backend=vllm", "llm_mode=exact"])
    with pytest.raises(ConfigError, match="llm_mode=beam"):
        run_eval(cfg, run)
    assert not (run / "eval").exists() or (run / "eval" / "_DONE.json").is_file()


def test_notebook_executes(run: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    if not (run / "eval" / "results.json").exists():
        run_eval(load_config(EvalStageConfig, None, ["models=[pop]"]), run)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["LLMREC_RUN"] = str(run)
    try:
        NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    finally:
        del os.environ["LLMREC_RUN"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("Pop" in str(o) for o in outputs)
