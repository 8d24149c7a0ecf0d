"""Settings of a zero-shot recommender (``zeroshot:`` in the eval config, ``llmrec zeroshot``).

Kept free of heavy imports: the eval stage's config holds a ``ZeroShotSection`` whether or not
the zero-shot model is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmrec.recommend.base import DEFAULT_BEAMS


@dataclass
class GroundingSection:
    """How an endpoint's answer lines are matched to catalog items."""

    fuzzy_min: float = field(
        default=0.85,
        metadata={"help": "lowest fuzzy similarity (0-1) that grounds a line", "min": 0.0},
    )
    embedding: bool = field(
        default=True,
        metadata={"help": "fall back to the nearest item by MiniLM embedding of the title"},
    )
    embedding_min: float = field(
        default=0.8,
        metadata={"help": "lowest cosine similarity that grounds a line by embedding", "min": 0.0},
    )
    embedding_model: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "sentence-transformers model (the default loads offline)"},
    )


@dataclass
class EndpointSection:
    """An OpenAI-compatible HTTP endpoint (``backend=openai``)."""

    base_url_env: str = field(
        default="OPENAI_BASE_URL",
        metadata={"help": "environment variable holding the base URL (…/v1)"},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "environment variable holding the API key (unset: no key sent)"},
    )
    api: Literal["chat", "completions"] = field(
        default="chat", metadata={"help": "chat: /chat/completions; completions: /completions"}
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature", "min": 0.0})
    max_tokens: int = field(default=512, metadata={"help": "longest answer in tokens", "min": 1})
    seed: int | None = field(
        default=None, metadata={"help": "sampling seed sent with each request (if the API has one)"}
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "more request fields, e.g. {top_p: 0.9} or vLLM's {min_tokens: 8}"},
    )
    timeout_s: float = field(default=120.0, metadata={"help": "per request", "min": 1.0})
    concurrency: int = field(default=4, metadata={"help": "requests in flight", "min": 1})
    max_retries: int = field(
        default=3, metadata={"help": "retries on 429 and 5xx answers", "min": 0}
    )


@dataclass
class ZeroShotSection:
    """A prompted LLM as a recommender: prompts from prompts/, answers grounded to items."""

    backend: Literal["hf", "vllm", "openai"] = field(
        default="hf",
        metadata={
            "help": "hf or vllm: a local model, decoding constrained to a title trie; openai: "
            "an OpenAI-compatible endpoint, answers grounded by matching"
        },
    )
    model: str = field(
        default="llm",
        metadata={
            "help": "hf/vllm: a trained stage of the run (llm = the newest), a model folder or "
            "a hub name; openai: the served model's name"
        },
    )
    prompt: str = field(
        default="next_item", metadata={"help": "prompt for the full catalog (prompts/<name>.yaml)"}
    )
    candidates_prompt: str = field(
        default="rank_candidates", metadata={"help": "prompt for ranking a candidate list"}
    )
    prompts_dir: str | None = field(
        default=None, metadata={"help": "folder of prompt YAML files (default: prompts/)"}
    )
    decoding: Literal["beam", "exact", "list"] = field(
        default="beam",
        metadata={
            "help": "local backends: beam (K distinct titles by constrained beam search), exact "
            "(every title's log-probability; hf), list (one title after another, each "
            "excluding the earlier ones; hf; honours `generation`)"
        },
    )
    candidate_scoring: Literal["exact", "decode"] = field(
        default="exact",
        metadata={
            "help": "hf, candidate lists: exact (every candidate title's log-probability, over a "
            "trie of the candidates alone) or decode (the decoding above, over the candidates)"
        },
    )
    num_beams: int = field(
        default=DEFAULT_BEAMS, metadata={"help": "beam width (raised to K)", "min": 1}
    )
    generation: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "list decoding: generate() settings (do_sample, temperature, top_p …)"},
    )
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass", "min": 1})
    max_history: int = field(
        default=10, metadata={"help": "most recent history items in the prompt", "min": 1}
    )
    max_prompt_tokens: int = field(
        default=0,
        metadata={
            "help": "local backends: longest prompt; older history items are dropped to fit "
            "(0: the model's context minus the longest title)",
            "min": 0,
        },
    )
    candidate_limit: int = field(
        default=100,
        metadata={
            "help": "when exclusions beyond the history leave at most this many items (eval "
            "candidates=N), they are listed in the candidates prompt and answers restricted to them",
            "min": 1,
        },
    )
    chat: Literal["auto", "yes", "no"] = field(
        default="auto", metadata={"help": "local: use the tokenizer's chat template (auto: if any)"}
    )
    separator: str = field(
        default="\n",
        metadata={"help": "the token ending a title in the trie (one token), or 'eos'"},
    )
    name_template: str = field(
        default="{{ title }}",
        metadata={
            "help": "Jinja over an item's fields: the answer string of an item; duplicates get "
            "their year, then their id, appended"
        },
    )
    text_template: str | None = field(
        default=None,
        metadata={
            "help": "Jinja over an item's fields: the `text` prompts show for an item "
            "(default: the index stage's built-in for the catalog's columns)"
        },
    )
    item_noun: str = field(
        default="", metadata={"help": "what an item is called (default: the run's, else item)"}
    )
    items_noun: str = field(default="", metadata={"help": "plural (default: the run's)"})
    dtype: str | None = field(default=None, metadata={"help": "hf: float32, bfloat16, float16"})
    seed: int = field(default=0, metadata={"help": "candidate order and sampling"})
    grounding: GroundingSection = field(default_factory=GroundingSection)
    endpoint: EndpointSection = field(default_factory=EndpointSection)


@dataclass
class ZeroShotRecommendConfig(ZeroShotSection):
    """``llmrec zeroshot recommend``: one user's zero-shot top-K, with the prompt and answers."""

    user_id: str | None = field(
        default=None, metadata={"help": "a test user (default: the first one)"}
    )
    k: int = field(default=10, metadata={"help": "items to recommend", "min": 1})
    candidates: int | None = field(
        default=None,
        metadata={"help": "rank this many candidates (the held-out item among them, seeded)"},
    )
    exclude_seen: bool = field(default=True, metadata={"help": "never recommend history items"})
