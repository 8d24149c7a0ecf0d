"""Assembling a ``ZeroShotRecommender``: from an item table and a loaded model (``build_zeroshot``),
or from a run directory and its settings (``zeroshot_from_run``); and one user's quick look.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import yaml

from llmrec.config import ConfigError
from llmrec.instruct.prompt import PromptFormat
from llmrec.run import CONFIG, DATA, INSTRUCT, TRAINED, RunLayout
from llmrec.zeroshot.catalog import ZeroShotCatalog
from llmrec.zeroshot.config import ZeroShotRecommendConfig, ZeroShotSection
from llmrec.zeroshot.grounding import Grounder, normalise, year_of
from llmrec.zeroshot.local import CandidateScorer, ListDecoder, PromptIds, context_length
from llmrec.zeroshot.prompts import ZeroShotPrompt, load_prompts
from llmrec.zeroshot.recommender import (
    Backend,
    EndpointBackend,
    LocalBackend,
    ZeroShotRecommender,
)
from llmrec.zeroshot.titles import separator_token_id, title_trie, token_key

logger = logging.getLogger(__name__)


def _prompts(section: ZeroShotSection) -> tuple[ZeroShotPrompt, ZeroShotPrompt]:
    prompts = load_prompts(section.prompts_dir)
    chosen = []
    for key, mode in (("prompt", "full"), ("candidates_prompt", "candidates")):
        name = getattr(section, key)
        if name not in prompts:
            raise ConfigError(f"{key}: no prompt {name!r}; known: {', '.join(sorted(prompts))}")
        if prompts[name].mode != mode:
            raise ConfigError(
                f"{key}: prompt {name!r} is a {prompts[name].mode} prompt, not {mode}"
            )
        if prompts[name].free_text and section.backend != "openai":
            raise ConfigError(
                f"{key}: prompt {name!r} asks for free text after each title, which a local "
                "backend's title-constrained decoding cannot write: use backend=openai"
            )
        chosen.append(prompts[name])
    return chosen[0], chosen[1]


def _text_key(names: list[str]) -> list[Hashable]:
    """Names an endpoint's answer could not tell apart: equal once normalised, same year."""
    return [(normalise(n), year_of(n)) for n in names]


def local_backend(
    items: pd.DataFrame, section: ZeroShotSection, model: Any, tokenizer: Any, progress: bool
) -> LocalBackend:
    """The title trie of ``items`` in ``tokenizer`` and the ranker that decodes under it."""
    from llmrec.recommend.hf import HFRecommender

    conversational = section.chat == "yes" or (
        section.chat == "auto" and bool(getattr(tokenizer, "chat_template", None))
    )
    eos = PromptFormat(conversational).end_token_id(tokenizer)
    end = separator_token_id(tokenizer, section.separator, eos)
    catalog = ZeroShotCatalog.from_items(
        items, token_key(tokenizer), section.name_template, section.text_template
    )
    trie = title_trie(catalog, tokenizer, end)
    prompts = cast(Any, PromptIds(tokenizer))  # PromptBuilder's part the decoders use
    if section.generation and section.decoding != "list":
        logger.warning("zeroshot.generation applies to decoding=list only; ignored")
    ranker: Any
    if section.backend == "vllm":
        if section.decoding != "beam":
            raise ConfigError("backend=vllm decodes by constrained beam search: decoding=beam")
        from llmrec.recommend.vllm import VLLMRecommender

        ranker = VLLMRecommender(
            model, prompts, trie, num_beams=section.num_beams, batch_size=section.batch_size
        )
    elif section.decoding == "list":
        ranker = ListDecoder(
            model,
            PromptIds(tokenizer),
            trie,
            dict(section.generation),
            section.batch_size,
            section.seed,
            progress,
        )
    else:
        ranker = HFRecommender(
            model,
            prompts,
            trie,
            mode=section.decoding,
            num_beams=section.num_beams,
            batch_size=section.batch_size,
            progress=progress,
        )
    context = context_length(model)
    budget = section.max_prompt_tokens or (context - trie.depth if context else None)
    scorer = None
    if section.backend == "hf" and section.candidate_scoring == "exact":
        scorer = CandidateScorer(model, tokenizer, trie)
    return LocalBackend(ranker, tokenizer, catalog, conversational, budget, scorer)


def build_zeroshot(
    items: pd.DataFrame,
    section: ZeroShotSection | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    client: Any = None,
    progress: bool = False,
) -> ZeroShotRecommender:
    """A zero-shot recommender over ``items`` (``item_id`` + fields): local backends take the
    loaded ``model`` (HF model or ``vllm.LLM``) and ``tokenizer``; ``openai`` an
    ``EndpointClient`` (default: from the environment)."""
    section = section or ZeroShotSection()
    prompt, candidates_prompt = _prompts(section)
    backend: Backend
    if section.backend == "openai":
        from llmrec.zeroshot.endpoint import EndpointClient

        catalog = ZeroShotCatalog.from_items(
            items, _text_key, section.name_template, section.text_template
        )
        client = client or EndpointClient.from_env(section.model, section.endpoint)
        backend = EndpointBackend(client, Grounder(catalog, section.grounding))
    else:
        if model is None or tokenizer is None:
            raise ValueError(f"backend={section.backend} needs a model and its tokenizer")
        local = local_backend(items, section, model, tokenizer, progress)
        catalog, backend = local.catalog, local
    return ZeroShotRecommender(
        catalog,
        backend,
        prompt,
        candidates_prompt,
        max_history=section.max_history,
        candidate_limit=section.candidate_limit,
        item_noun=section.item_noun or "item",
        items_noun=section.items_noun or "items",
        seed=section.seed,
    )


def load_local_model(layout: RunLayout, section: ZeroShotSection) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a run's trained stage, a folder or a hub name; on vLLM the model
    is a ``vllm.LLM`` built on the servable folder."""
    from transformers import AutoTokenizer

    from llmrec.recommend.loading import load_model, resolve_stage, servable_dir, torch_dtype

    stage = None
    if section.model == "llm" or section.model in TRAINED:
        stage = resolve_stage(layout, None if section.model == "llm" else section.model)
    if section.backend == "vllm":
        from llmrec.recommend.vllm import EngineConfig, build_llm

        folder = servable_dir(layout, stage) if stage else section.model
        engine = EngineConfig(max_logprobs=max(64, section.num_beams))
        return build_llm(folder, engine), AutoTokenizer.from_pretrained(folder)
    if stage is not None:
        model, tokenizer = load_model(layout, stage, section.dtype)
    else:
        from transformers import AutoModelForCausalLM

        dtype = torch_dtype(section.dtype) if section.dtype else "auto"
        model = AutoModelForCausalLM.from_pretrained(section.model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(section.model)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


def _nouns(layout: RunLayout, section: ZeroShotSection) -> tuple[str, str]:
    """The section's nouns, else the run's instruct stage's, else item/items."""
    nouns = {"item_noun": "item", "items_noun": "items"}
    config = layout.root / INSTRUCT / CONFIG
    if config.is_file():
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        nouns.update({k: str(saved[k]) for k in nouns if saved.get(k)})
    return section.item_noun or nouns["item_noun"], section.items_noun or nouns["items_noun"]


def zeroshot_from_run(
    run: str | Path | RunLayout, section: ZeroShotSection | None = None, progress: bool = False
) -> ZeroShotRecommender:
    """The zero-shot recommender a run's settings describe (its catalog: the data stage's)."""
    layout = RunLayout.of(run)
    section = section or ZeroShotSection()
    layout.stage(DATA).require(f"llmrec data prepare --run {layout.root}")
    items = pd.read_parquet(layout.items_file)
    item_noun, items_noun = _nouns(layout, section)
    from dataclasses import replace

    section = replace(section, item_noun=item_noun, items_noun=items_noun)
    if section.backend == "openai":
        return build_zeroshot(items, section, progress=progress)
    model, tokenizer = load_local_model(layout, section)
    return build_zeroshot(items, section, model=model, tokenizer=tokenizer, progress=progress)


def show_user(run: str | Path, cfg: ZeroShotRecommendConfig) -> str:
    """One test user's zero-shot top-K: the prompt, each answer line with its grounding, and
    where the held-out item landed."""
    from llmrec.data.prepare import PreparedData

    prepared = PreparedData.load(run)
    cases = prepared.split.cases("test")
    if cfg.user_id is not None:
        cases = cases[cases["user_id"].astype(str) == str(cfg.user_id)]
        if cases.empty:
            raise ConfigError(f"user_id: no test case for user {cfg.user_id!r}")
    case = cases.iloc[0]
    history = [str(i) for i in case["history"]]
    target = str(case["target"])
    catalog = prepared.items["item_id"].astype(str).tolist()
    exclude = set(history) if cfg.exclude_seen else set()
    if cfg.candidates:
        # The evaluation's rule (the target and never-seen items, seeded), for one user.
        pool = sorted(set(catalog) - set(history) - {target})
        rng = np.random.default_rng(cfg.seed)
        picked = rng.choice(len(pool), size=min(cfg.candidates - 1, len(pool)), replace=False)
        exclude |= set(catalog) - {target} - {pool[j] for j in picked}
    rec = zeroshot_from_run(run, cfg)
    items, _ = rec.recommend([history], cfg.k, [exclude], [str(case["user_id"])])
    request, answers = rec.last[0]
    titles = prepared.items.set_index("item_id")["title"].astype(str).to_dict()
    out = [f"user {case['user_id']} — prompt:", request.text, "", "answer lines:"]
    for answer in answers:
        named = f"{answer.item} ({titles.get(answer.item, '?')})" if answer.item else "no item"
        out.append(f"  {answer.line!r} → {named}  [{answer.method} {answer.score:.3f}]")
    out.append(f"\ntop-{cfg.k}:")
    for rank, item in enumerate(items[0], start=1):
        mark = "  <- the held-out next item" if item == target else ""
        out.append(f"  {rank:>2}. {titles.get(item, item) if item else '(empty)'}{mark}")
    out.append(f"held-out next item: {titles.get(target, target)}")
    out.append(f"validity: {rec.stats.validity:.1%} of {rec.stats.lines} answer lines")
    return "\n".join(out)
