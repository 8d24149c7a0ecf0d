"""What the alignment stages (GRPO, DPO) start from: the SFT model as a policy, and the training
windows they learn on.

**The policy and its reference.** Full fine-tuning continues the SFT model's own weights,
loaded from disk (``<run>/sft/model``, or the merged export of a LoRA SFT stage): TRL builds the
frozen reference model from the policy's folder (``config._name_or_path``), so the reference is
an exact copy of the SFT model. LoRA merges the SFT stage into one checkpoint
(``llmrec.train.export.export_model(run, "sft")`` → ``<run>/export/sft/``, SID rows included)
and trains a *new* adapter on it; TRL's reference is then that merged model with the adapter
disabled. ``model_info.json["base"]`` records ``{"kind": "stage", "stage": "sft", "key": ...}``
so ``llmrec.recommend.loading.load_model(run, "grpo")`` rebuilds it and refuses an export made
from another SFT model.

**Windows.** Every position of a user's *training* items is a (history → next item) case; the
validation and test items are never seen. The most recent ``per_user`` windows of each user are
kept (they look most like the held-out cases), then an optional seeded subset; windows whose
rendered prompt repeats one already kept are dropped, so a prompt names exactly one window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import ConfigError
from llmrec.errors import UserError
from llmrec.recommend.prompting import PromptBuilder
from llmrec.run import RunLayout
from llmrec.train.align_config import Finetune, WindowsSection
from llmrec.train.config import LoraSection

logger = logging.getLogger(__name__)

SFT = "sft"


@dataclass(frozen=True)
class Window:
    """One training case: the history (oldest first) and the item that came next."""

    history: tuple[str, ...]
    target: str


def training_windows(
    train_items: Sequence[Sequence[str]], cfg: WindowsSection, seed: int
) -> list[Window]:
    """Windows cut from each user's training items (see the module docstring)."""
    out: list[Window] = []
    for items in train_items:
        items = [str(i) for i in items]
        ends = range(max(cfg.min_history, 1), len(items))
        if cfg.per_user is not None:
            ends = ends[-cfg.per_user :]
        out += [Window(tuple(items[:end]), items[end]) for end in ends]
    if cfg.samples is not None and cfg.samples < len(out):
        keep = np.sort(np.random.default_rng(seed).choice(len(out), cfg.samples, replace=False))
        out = [out[i] for i in keep]
    return out


def unique_prompts(windows: Sequence[Window], prompts: PromptBuilder) -> dict[str, Window]:
    """Rendered prompt text → its window, keeping the first window of a repeated prompt."""
    by_text: dict[str, Window] = {}
    for window in windows:
        by_text.setdefault(prompts.text(window.history), window)
    if len(by_text) < len(windows):
        logger.info("%d windows repeat another's prompt; dropped", len(windows) - len(by_text))
    return by_text


def window_dataset(
    layout: RunLayout, decoding: Any, cfg: WindowsSection, seed: int
) -> tuple[Any, dict[str, Window]]:
    """The training windows as a TRL prompt dataset (``prompt``, ``history``, ``target``) and
    the prompt → window map the rollouts and pair builders read."""
    from datasets import Dataset

    from llmrec.data.prepare import PreparedData

    split = PreparedData.load(layout.root).split
    windows = training_windows(split.table["train_items"].tolist(), cfg, seed)
    by_text = unique_prompts(windows, decoding.prompts)
    if not by_text:
        raise ConfigError("windows: no training window is long enough (see windows.min_history)")
    dataset = Dataset.from_dict(
        {
            "prompt": list(by_text),
            "history": [list(w.history) for w in by_text.values()],
            "target": [w.target for w in by_text.values()],
        }
    )
    return dataset, by_text


@dataclass
class Policy:
    """The model to align, its tokenizer, the PEFT config of a new adapter (LoRA), and what
    ``model_info.json`` needs to reload the result."""

    model: Any
    tokenizer: Any
    peft_config: Any
    info: dict[str, Any]
    source: Path  # the folder the weights came from (TRL's reference is loaded from it)


def sft_source(layout: RunLayout, finetune: Finetune, is_main: bool) -> Path:
    """The folder of plain HF weights of the SFT model: its own model when fully fine-tuned,
    else its merged export (built here by the main process when missing or stale)."""
    sft_info = layout.read_model_info(SFT)
    if sft_info["finetune"] == "full" and finetune == "full":
        return layout.model_dir(SFT)
    if is_main:
        from llmrec.train.export import export_model

        export_model(layout, SFT)
    return layout.export(SFT).path


def load_policy(
    layout: RunLayout, finetune: Finetune, lora: LoraSection, state: Any, seed: int
) -> Policy:
    """The SFT model as a policy to align (see the module docstring). Call on every process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.recommend.loading import torch_dtype
    from llmrec.train.config import SFTStageConfig
    from llmrec.train.peft_setup import embeddings_tied, lora_config

    sft_info = layout.read_model_info(SFT)
    if sft_info["finetune"] == "qlora" and finetune == "full":
        raise UserError("a QLoRA SFT stage is aligned with finetune=lora", field="finetune")
    source = sft_source(layout, finetune, state.is_main_process)
    state.wait_for_everyone()  # the export is written once, by the main process
    # Full: the SFT dtype (fp32 master weights for mixed precision). LoRA: the frozen merged
    # base may stay in the SFT dtype too.
    dtype = torch_dtype(sft_info["dtype"])
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source)
    sid_ids = [int(i) for i in sft_info["sid_token_ids"]]
    peft_config = None
    base: dict[str, Any] | None = None
    if finetune == "lora":
        # A new adapter on the merged SFT model; the SID rows train again as in SFT.
        peft_config = lora_config(SFTStageConfig(lora=lora), model, sid_ids)
        base = {"kind": "stage", "stage": SFT, "key": layout.key(SFT)}
    info = {
        "finetune": finetune,
        "model": sft_info["model"],
        "revision": sft_info.get("revision"),
        "base": base,
        "start": {"stage": SFT, "key": layout.key(SFT), "weights": str(source)},
        "tied": embeddings_tied(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vocab_rows": int(model.get_input_embeddings().weight.shape[0]),
        "sid_token_ids": sid_ids,
        "seed": seed,
    }
    if model.dtype != torch.float32 and finetune == "full":
        logger.info("full fine-tuning in %s, as the SFT model was trained", model.dtype)
    return Policy(model, tokenizer, peft_config, info, source)


def sft_is_pretrained(run: str | Path | RunLayout) -> bool:
    """Whether the run's SFT model is a pretrained one (not the tiny from-scratch model)."""
    return str(RunLayout.of(run).read_model_info(SFT)["model"]) != "tiny"


def stop_at_item_end(model: Any, end_token_id: int) -> None:
    """Make the token that ends an item one of the model's EOS tokens (TRL counts completions
    that end elsewhere as truncated); the saved generation config keeps it."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end_token_id not in ids:
        model.generation_config.eos_token_id = [*ids, end_token_id]
