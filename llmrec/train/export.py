"""Export a trained stage as one plain HF checkpoint: ``llmrec export --run R [--stage sft]``.

A LoRA adapter (and its trained SID token rows) is merged into its base and the result written
to ``<run>/export/<stage>/``: ``config.json``, ``model.safetensors``, the tokenizer with every SID
token, ``generation_config.json``, ``sid_map.json`` and ``export_info.json`` (the stage and the
key it was exported from, which serving and evaluation check). That folder is what
``AutoModelForCausalLM.from_pretrained`` and vLLM load, no PEFT needed, and what DPO, GRPO and
per-user adapters start from. A fully fine-tuned model is copied (and cast when asked). The
folder is built atomically, like a stage, and rebuilt when the stage changes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from llmrec.io import StageDir, write_json_atomic
from llmrec.recommend.loading import load_model, torch_dtype
from llmrec.run import EXPORT_INFO, SID_MAP, RunLayout

logger = logging.getLogger(__name__)

__all__ = ["export_model"]


def export_model(
    run: str | Path | RunLayout,
    stage: str = "sft",
    out_dir: str | Path | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Write the merged checkpoint of a trained stage; returns its folder.

    ``out_dir`` defaults to ``<run>/export/<stage>``; ``dtype`` (float32, bfloat16, float16) to
    the dtype the weights were trained in. LoRA is merged in float32, then cast.
    """
    layout = RunLayout.of(run)
    info = layout.read_model_info(stage)
    target = dtype or info["dtype"]
    torch_dtype(target)  # validate before any loading
    out = (
        layout.export(stage)
        if out_dir is None
        else StageDir(Path(out_dir).parent, Path(out_dir).name)
    )
    key = layout.stage_key({"dtype": target}, upstream=[stage])

    def fill(tmp: Path) -> dict[str, Any]:
        merged = info["finetune"] != "full"
        model, tokenizer = load_model(layout, stage, dtype="float32" if merged else target)
        if merged:
            # Folds the LoRA deltas and the trained SID rows into the base matrices; tied
            # embeddings stay one shared matrix.
            model = model.merge_and_unload()
        model = model.to(torch_dtype(target))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copy(layout.sid_map_file, tmp / SID_MAP)
        export_info = {
            "stage": stage,
            "stage_key": layout.key(stage),
            "run": str(layout.root.resolve()),
            "finetune": info["finetune"],
            "merged": merged,
            "dtype": target,
            "base": info["model"],
        }
        write_json_atomic(tmp / EXPORT_INFO, export_info)
        logger.info("exported %s (%s, %s) to %s", stage, info["finetune"], target, out.path)
        return {"finetune": info["finetune"], "dtype": target}

    out.build(key, fill, force=force)
    return out.path
