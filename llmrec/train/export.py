"""Reload a finished SFT stage, and export it as one plain HF checkpoint.

``llmrec export --run runs/ml100k`` merges a LoRA adapter (and its trained SID token rows) into
the base weights and writes ``<run>/export/``: ``config.json``, ``model.safetensors``, the
tokenizer with every SID token, ``generation_config.json`` and ``sid_map.json`` — what
``AutoModelForCausalLM.from_pretrained`` and vLLM load, no PEFT needed. A fully fine-tuned model
is copied (and cast when asked). The folder is written atomically, like a stage.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from llmrec.config import config_hash
from llmrec.io import StageDir, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["export_model", "load_sft_model", "resolve_sft_dir"]

DTYPES = ("float32", "bfloat16", "float16")


def resolve_sft_dir(path: str | Path) -> Path:
    """The finished SFT stage folder: ``path/sft`` for a run directory, or ``path`` itself."""
    path = Path(path)
    for candidate in (path / "sft", path):
        if (
            StageDir(candidate.parent, candidate.name).is_done()
            and (candidate / "sft_info.json").is_file()
        ):
            return candidate
    raise FileNotFoundError(
        f"no finished SFT stage at {path}/sft or {path}. Run `llmrec train sft --run RUN` first."
    )


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def load_sft_model(path: str | Path, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a finished SFT stage: a plain model, or a ``PeftModel`` (LoRA).

    A LoRA base is the saved ``base_model/`` (tiny models) or the pretrained model named in
    ``sft_info.json``, loaded unquantized (QLoRA adapters too) and sized for the SID tokens as
    in training; the adapter then restores the trained SID rows. ``dtype`` defaults to the
    dtype the weights were trained in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.tokens import resize_embeddings

    model: Any
    base: Any
    sft_dir = resolve_sft_dir(path)
    info = json.loads((sft_dir / "sft_info.json").read_text(encoding="utf-8"))
    torch_dtype = _torch_dtype(dtype or info["dtype"])
    tokenizer = AutoTokenizer.from_pretrained(sft_dir / "model")
    if info["finetune"] == "full":
        model = AutoModelForCausalLM.from_pretrained(sft_dir / "model", dtype=torch_dtype)
        return model, tokenizer
    from peft import PeftModel

    if info["base_model"]:
        base = AutoModelForCausalLM.from_pretrained(sft_dir / info["base_model"], dtype=torch_dtype)
    else:
        base = AutoModelForCausalLM.from_pretrained(
            info["model"], revision=info["revision"], dtype=torch_dtype
        )
        # The same call as in training gives the same shapes; the adapter overwrites SID rows.
        resize_embeddings(base, tokenizer, info["sid_token_ids"], seed=info.get("seed", 0))
    rows = int(base.get_input_embeddings().weight.shape[0])
    if rows != info["vocab_rows"]:
        raise ValueError(
            f"the base model has {rows} embedding rows, the adapter was trained with "
            f"{info['vocab_rows']}: is {info['model']!r} still the model it was trained on?"
        )
    model = PeftModel.from_pretrained(base, sft_dir / "model")
    return model, tokenizer


def export_model(
    run_or_sft_dir: str | Path,
    out_dir: str | Path | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Write a merged, plain HF checkpoint (safetensors) + tokenizer + SID map; returns its folder.

    ``out_dir`` defaults to ``<run>/export``; ``dtype`` (float32, bfloat16, float16) to the
    dtype the weights were trained in. LoRA is merged in float32, then cast.
    """
    sft_dir = resolve_sft_dir(run_or_sft_dir)
    out = Path(out_dir) if out_dir is not None else sft_dir.parent / "export"
    info = json.loads((sft_dir / "sft_info.json").read_text(encoding="utf-8"))
    target = dtype or info["dtype"]
    _torch_dtype(target)  # validate before any loading
    marker = StageDir(sft_dir.parent, sft_dir.name).done_info() or {}
    key = config_hash({"sft": marker.get("config_hash"), "dtype": target})
    stage = StageDir(out.parent, out.name)

    def fill(tmp: Path) -> dict[str, Any]:
        merged = info["finetune"] != "full"
        model, tokenizer = load_sft_model(sft_dir, dtype="float32" if merged else target)
        if merged:
            # Folds the LoRA deltas and the trained SID rows into the base matrices; tied
            # embeddings stay one shared matrix.
            model = model.merge_and_unload()
        model = model.to(_torch_dtype(target))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copy(sft_dir / "sid_map.json", tmp / "sid_map.json")
        write_json_atomic(
            tmp / "export_info.json",
            {
                "source": str(sft_dir),
                "run": str(sft_dir.parent.resolve()),
                "finetune": info["finetune"],
                "merged": merged,
                "dtype": target,
                "base": info["model"],
            },
        )
        logger.info("exported %s (%s, %s) to %s", sft_dir, info["finetune"], target, out)
        return {"finetune": info["finetune"], "dtype": target}

    stage.build(key, fill, force=force)
    return out
