"""SID tokens in the tokenizer and the model: add them as atomic tokens, then size and initialise
the embedding rows they need.

SID tokens are added as *non-special*, *non-normalized* ``AddedToken`` s: the tokenizer then cuts
them out of the raw text before its normalizer, pre-tokenizer and BPE/Unigram/WordPiece model
run, so ``<a_12>`` can neither be split (``<a`` ``_12>``) nor merged with its neighbours (``><``,
``>,``). Non-special keeps them in ``decode(..., skip_special_tokens=True)`` output, where the
generated SID must survive.

New embedding rows start near the mean of the trained rows (Hewitt, "Initializing new word
embeddings for pretrained language models", 2021): the model's next-token distribution barely
moves, so fine-tuning starts from the pretrained behaviour instead of from random logits. A small
seeded noise breaks the symmetry between new tokens. ``init="codebook"`` instead gives each token
a direction derived from its quantizer centroid, so tokens of nearby codes start nearby.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import AddedToken

from llmrec.indexing.sid_map import SemanticIdMap

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingResizeReport", "add_sid_tokens", "resize_embeddings", "sid_token_ids"]

InitMode = Literal["mean", "codebook"]


def _atomic(token: str) -> AddedToken:
    # normalized=False: matched on the raw text, so a lower-casing or "▁"-prepending normalizer
    # cannot change what is matched; lstrip/rstrip=False: surrounding spaces stay their own tokens.
    return AddedToken(
        token, normalized=False, special=False, single_word=False, lstrip=False, rstrip=False
    )


def add_sid_tokens(tokenizer: Any, sid_map: SemanticIdMap) -> list[int]:
    """Add every SID vocabulary token as an atomic token (idempotent); their ids, vocabulary order."""
    vocabulary = sid_map.vocabulary()
    already = set(tokenizer.get_added_vocab())
    missing = [tok for tok in vocabulary if tok not in already]
    if missing:
        # A token the base vocabulary already holds keeps its id but becomes atomic as well.
        n_new = tokenizer.add_tokens([_atomic(tok) for tok in missing])
        logger.info(
            "added %d SID tokens to the tokenizer (%d were already in its base vocabulary); "
            "len(tokenizer)=%d",
            n_new,
            len(missing) - n_new,
            len(tokenizer),
        )
    return sid_token_ids(tokenizer, sid_map)


def sid_token_ids(tokenizer: Any, sid_map: SemanticIdMap) -> list[int]:
    """The ids of the SID vocabulary tokens, vocabulary order; raises if one is missing."""
    vocabulary = sid_map.vocabulary()
    ids = tokenizer.convert_tokens_to_ids(vocabulary)
    unk = getattr(tokenizer, "unk_token_id", None)
    absent = [tok for tok, i in zip(vocabulary, ids, strict=True) if i is None or i == unk]
    if absent:
        raise KeyError(
            f"{len(absent)} SID tokens are not in the tokenizer (first: {absent[:3]}); "
            "call add_sid_tokens() first"
        )
    return [int(i) for i in ids]


@dataclass(frozen=True)
class EmbeddingResizeReport:
    """What :func:`resize_embeddings` did."""

    n_added: int  # rows initialised
    tied: bool  # input and output embeddings share one matrix
    init: str
    old_rows: int
    new_rows: int


def resize_embeddings(
    model: Any,
    tokenizer: Any,
    new_token_ids: Sequence[int],
    *,
    init: InitMode = "mean",
    codebook_vectors: Any = None,
    noise_std: float = 0.02,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
) -> EmbeddingResizeReport:
    """Grow the embeddings to fit the tokenizer and initialise the rows of the new tokens."""
    if init not in ("mean", "codebook"):
        raise ValueError(f"init must be 'mean' or 'codebook', got {init!r}")
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is inp.weight
    old_rows = int(inp.weight.shape[0])
    ids = [int(i) for i in new_token_ids]
    if ids and (min(ids) < 0 or max(ids) >= len(tokenizer)):
        raise ValueError(f"token ids must lie in [0, {len(tokenizer)}), got {min(ids)}..{max(ids)}")

    # Never shrink: checkpoints such as Qwen2's carry more rows than their tokenizer has tokens.
    target = max(old_rows, len(tokenizer))
    if pad_to_multiple_of:
        target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    if target != old_rows:
        device = inp.weight.device
        # transformers fills the new rows from the global RNG; keep the caller's RNG untouched
        # (we overwrite the rows we need, the rest are padding).
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model.resize_token_embeddings(target, mean_resizing=False)
        inp = model.get_input_embeddings()
        out = model.get_output_embeddings()
    if tied and out is not None and out.weight is not inp.weight:
        raise RuntimeError("input and output embeddings were tied before the resize but not after")

    # Rows of ids in the tokenizer's base vocabulary are trained (a BPE may have learnt "<a_1>"
    # itself): keep them. Added ids are new, even below old_rows (Qwen2's spare rows).
    base = int(tokenizer.vocab_size)
    init_ids = sorted({i for i in ids if i >= base})
    if len(init_ids) < len(set(ids)):
        logger.info(
            "%d SID tokens are in the base vocabulary; their embeddings are kept",
            len(set(ids)) - len(init_ids),
        )
    if not init_ids:
        return EmbeddingResizeReport(0, tied, init, old_rows, int(inp.weight.shape[0]))

    # Statistics over the rows of real tokens other than the ones being initialised.
    known = torch.ones(min(old_rows, len(tokenizer)), dtype=torch.bool)
    known[[i for i in init_ids if i < len(known)]] = False
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor(init_ids, device=inp.weight.device)
    with torch.no_grad():
        weight = inp.weight
        if init == "codebook":
            rows = _codebook_rows(
                weight, known, ids, init_ids, codebook_vectors, noise_std, generator
            )
        else:
            rows = _mean_rows(weight, known, len(init_ids), noise_std, generator)
        weight.index_copy_(0, index, rows.to(weight.dtype))
        if out is not None and not tied:
            rows = _mean_rows(out.weight, known, len(init_ids), noise_std, generator)
            out.weight.index_copy_(0, index, rows.to(out.weight.dtype))
            bias = getattr(out, "bias", None)
            if bias is not None:
                fill = bias[: len(known)][known.to(bias.device)].float().mean()
                bias.index_fill_(0, index, fill.to(bias.dtype).item())
    logger.info(
        "initialised %d embedding rows (%s, %s embeddings); rows %d → %d",
        len(init_ids),
        init,
        "tied" if tied else "untied",
        old_rows,
        int(inp.weight.shape[0]),
    )
    return EmbeddingResizeReport(len(init_ids), tied, init, old_rows, int(inp.weight.shape[0]))


def _mean_rows(
    weight: torch.Tensor, known: torch.Tensor, n: int, noise_std: float, gen: torch.Generator
) -> torch.Tensor:
    """``n`` rows: the mean of the known rows plus noise of ``noise_std`` × their spread."""
    old = weight[: len(known)][known.to(weight.device)].float()
    mean = old.mean(0)
    scale = noise_std * float(old.std(0).pow(2).mean().sqrt())  # RMS of the per-dimension std
    noise = torch.randn((n, weight.shape[1]), generator=gen) * scale
    return mean.unsqueeze(0) + noise.to(weight.device)


def _codebook_rows(
    weight: torch.Tensor,
    known: torch.Tensor,
    ids: list[int],
    init_ids: list[int],
    codebook_vectors: Any,
    noise_std: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Rows from the tokens' codebook vectors: centred, randomly projected, scaled to the known
    rows' mean norm."""
    if codebook_vectors is None:
        raise ValueError("init='codebook' needs codebook_vectors [len(new_token_ids), d_code]")
    vectors = codebook_vectors
    if isinstance(vectors, (list, tuple)):
        vectors = np.concatenate([np.asarray(v, dtype=np.float32) for v in vectors])
    vec = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if vec.ndim != 2 or vec.shape[0] != len(ids):
        raise ValueError(
            f"codebook_vectors must be [len(new_token_ids)={len(ids)}, d_code], "
            f"got {list(vec.shape)}"
        )
    position = {token_id: k for k, token_id in enumerate(ids)}
    vec = vec[[position[i] for i in init_ids]]
    if len(vec) > 1:
        # Centroids of one catalog share a large common component; without centring every
        # projected row would point the same way.
        vec = vec - vec.mean(0, keepdim=True)
    hidden = weight.shape[1]
    # A Gaussian projection roughly keeps distances (Johnson-Lindenstrauss): near codes → near rows.
    proj = torch.randn((vec.shape[1], hidden), generator=gen) / vec.shape[1] ** 0.5
    old = weight[: len(known)][known.to(weight.device)].float().cpu()
    target_norm = old.norm(dim=1).mean()
    spread = float(old.std(0).pow(2).mean().sqrt())

    def rescale(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * target_norm

    # Noise after the first rescale, so noise_std means the same as for init="mean"; it only
    # matters for codes with equal vectors (unused codes of one codebook often coincide).
    rows = rescale(vec @ proj)
    rows = rescale(rows + torch.randn(rows.shape, generator=gen) * (noise_std * spread))
    return rows.to(weight.device)
