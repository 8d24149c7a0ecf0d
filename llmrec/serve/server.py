"""``llmrec serve``: a run's model behind the HTTP API, on vLLM (default) or HF.

Prompts, SID map, titles and users come from the run directory; the weights from ``--model``
(default: ``<run>/export``, else a full fine-tune's ``<run>/sft/model``). ``--model`` alone
serves an export (or a run's ``sft/model``) with the run it came from. LoRA adapters named in
``adapters`` are served side by side on the one base model (vLLM backend).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmrec.recommend.vllm import EngineConfig, default_model_dir, trie_file

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """HTTP server, backend and limits."""

    backend: Literal["vllm", "hf"] = field(
        default="vllm", metadata={"help": "vllm (AsyncLLM) or hf (micro-batched transformers)"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    num_beams: int = field(default=20, metadata={"help": "beam width (raised to k when smaller)"})
    max_k: int = field(default=100, metadata={"help": "largest k a request may ask for"})
    max_history: int = field(default=500, metadata={"help": "longest explicit history accepted"})
    adapters: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "LoRA adapters by name: {name: folder} (vLLM backend; LoRA-only)"},
    )
    hf_max_batch: int = field(default=16, metadata={"help": "hf: requests per micro-batch"})
    hf_max_wait_ms: float = field(
        default=5.0, metadata={"help": "hf: how long a micro-batch waits for more requests"}
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
        raise FileNotFoundError(f"{path} is not a PEFT adapter (no adapter_config.json)")
    info = json.loads(config.read_text())
    if info.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: vLLM serves LoRA adapters only, not {info['peft_type']}")
    extra = [k for k in ("trainable_token_indices", "modules_to_save") if info.get(k)]
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as f:
            extra += [k for k in f.keys() if "lora_" not in k][:3]  # noqa: SIM118
    if extra:
        raise ValueError(
            f"{path}: the adapter trains more than LoRA matrices ({', '.join(extra)}), e.g. new "
            "SID token rows, which vLLM's LoRA serving cannot apply. Merge it into its base with "
            "`llmrec export --run RUN` and serve the export, or train LoRA-only adapters on a "
            "base whose SID rows are already trained."
        )
    return path


def resolve_run(run: str | Path | None, model_dir: str | Path | None) -> Path:
    """The run directory to serve: ``run`` when given, else the one ``model_dir`` came from
    (an export names its run in ``export_info.json``; a full fine-tune lives in
    ``<run>/sft/model``)."""
    if run is not None:
        return Path(run)
    if model_dir is None:
        raise ValueError(
            "give --run RUN (a run directory) or --model DIR (an export or a run's "
            "sft/model folder)"
        )
    model_dir = Path(model_dir)
    candidates = []
    info = model_dir / "export_info.json"
    if info.is_file():
        data = json.loads(info.read_text())
        candidates += [Path(data["run"])] if "run" in data else []
        candidates += [Path(data["source"]).parent] if "source" in data else []
    candidates.append(model_dir.parent.parent)  # <run>/sft/model
    for candidate in candidates:
        if (candidate / "instruct" / "_DONE.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{model_dir}: cannot tell which run it belongs to (prompts, SIDs and titles come from "
        f"the run directory); tried {[str(c) for c in candidates]}. Give --run RUN as well."
    )


def build_app(cfg: ServeConfig, run: str | Path | None, model_dir: str | Path | None = None) -> Any:
    """The FastAPI app for a run (the backend starts with the server)."""
    from llmrec.constrain.trie import ItemTrie
    from llmrec.indexing.sid_map import SemanticIdMap
    from llmrec.recommend.prompting import PromptBuilder
    from llmrec.serve.app import Limits, create_app
    from llmrec.serve.backends import Backend, HFBackend, ServingCatalog, VLLMBackend

    run = resolve_run(run, model_dir)
    model_dir = Path(model_dir) if model_dir else default_model_dir(run)
    prompts = PromptBuilder.from_run(run)
    sid_map = SemanticIdMap.load(run / "sids" / "sid_map.json")
    trie = ItemTrie.from_sid_map(sid_map, prompts.tokenizer, prompts.end_token_id)
    catalog = ServingCatalog.from_run(run, trie.item_ids)
    if cfg.adapters and cfg.backend != "vllm":
        raise ValueError("adapters are served by the vllm backend only")
    if cfg.adapters:
        for path in cfg.adapters.values():
            check_adapter(path)

    def make_backend() -> Backend:
        if cfg.backend == "vllm":
            from llmrec.recommend.vllm import build_async_engine

            engine_cfg = cfg.engine
            if cfg.adapters and not engine_cfg.enable_lora:
                engine_cfg = EngineConfig(**{**engine_cfg.__dict__, "enable_lora": True})
            engine = build_async_engine(model_dir, engine_cfg)
            return VLLMBackend(
                engine,
                prompts,
                trie,
                str(trie_file(trie)),
                cfg.num_beams,
                lora_requests(cfg.adapters),
            )
        from transformers import AutoModelForCausalLM

        from llmrec.recommend.hf import HFRecommender

        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        rec = HFRecommender(model, prompts, trie, num_beams=cfg.num_beams)
        return HFBackend(rec, cfg.num_beams, cfg.hf_max_batch, cfg.hf_max_wait_ms)

    return create_app(make_backend, catalog, Limits(cfg.max_k, cfg.max_history))


def serve(cfg: ServeConfig, run: str | Path | None, model_dir: str | Path | None = None) -> None:
    """Run the HTTP server until interrupted."""
    import uvicorn

    app = build_app(cfg, run, model_dir)
    logger.info("listening on http://%s:%d (OpenAPI: /docs, /openapi.json)", cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
