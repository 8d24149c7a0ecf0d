"""A tiny tokenizer and causal LM built locally, for tests and the CPU quickstart (no downloads).

Two tokenizer families, because SID handling differs between them: a byte-level BPE with
Qwen2's pre-tokenizer (trained with ``tokenizers``, returned as a ``Qwen2Tokenizer``) and a
SentencePiece BPE with byte fallback wrapped as a ``LlamaTokenizer`` (``▁`` word prefix,
``<s>``/``</s>``). Both get a ChatML chat template and pad on the left, as generation wants.
Models are Qwen2 or Llama configs with a few small layers. Pair SentencePiece with
``arch="llama"``: transformers 5 reloads the tokenizer of every qwen2 checkpoint as a
Qwen2Tokenizer (``save_tiny`` checks the reload). Needs transformers >= 5 (tokenizer classes
built from vocab + merges).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from llmrec.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["CHATML_TEMPLATE", "build_tiny_model", "save_tiny", "train_tokenizer"]

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# ChatML, with {% generation %} around assistant turns so `return_assistant_tokens_mask` (and TRL's
# assistant-only loss) can find the tokens to train on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TokenizerKind = Literal["bpe", "sentencepiece"]
Arch = Literal["qwen2", "llama"]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, *, kind: TokenizerKind = "bpe"
) -> Any:
    """Train a small tokenizer on ``texts``: byte-level BPE, or SentencePiece as a Llama tokenizer."""
    if kind == "bpe":
        return _train_bpe(texts, vocab_size)
    if kind == "sentencepiece":
        return _train_sentencepiece(texts, vocab_size)
    raise ValueError(f"kind must be 'bpe' or 'sentencepiece', got {kind!r}")


def _train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2's exact pipeline (NFC, its split regex, byte-level), returned as a Qwen2Tokenizer:
    # transformers 5 loads the tokenizer of any qwen2 checkpoint as Qwen2Tokenizer, which
    # rebuilds this pipeline around the saved vocab and merges, so any other one would tokenise
    # differently after a save and reload.
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no unknown tokens
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    model = json.loads(backend.to_str())["model"]
    merges: Any = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        bos_token=END_OF_TEXT,  # as Qwen2's config: one document separator for all three
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        extra_special_tokens=[IM_START, IM_END],
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
    )
    logger.info("trained a byte-level BPE (Qwen2) tokenizer: %d tokens", len(tokenizer))
    return tokenizer


def _lines(texts: Iterable[str]) -> Iterator[str]:
    # SentencePiece trains on sentences; newlines become byte-fallback pieces, as in Llama.
    for text in texts:
        yield from (line for line in text.split("\n") if line)


def _train_sentencepiece(texts: Iterable[str], vocab_size: int) -> Any:
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    with tempfile.TemporaryDirectory(prefix="llmrec-spm-") as tmp:
        prefix = str(Path(tmp) / "tokenizer")
        # Llama's trainer settings: BPE, byte fallback, digits split, no normalisation.
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(texts),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            pad_piece="<pad>",
            hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces
            num_threads=1,  # deterministic
            minloglevel=2,
        )
        processor = spm.SentencePieceProcessor(model_file=prefix + ".model")
    # transformers 5 converts a .model file through protobuf, which llmrec does not require;
    # vocab + merges rebuilt from the pieces is what that conversion produces for BPE models.
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,  # "▁" only at the start of the text, not after every added token
        extra_special_tokens=[IM_START, IM_END],
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
    )
    logger.info("trained a SentencePiece (Llama) tokenizer: %d tokens", len(tokenizer))
    return tokenizer


def build_tiny_model(
    tokenizer: Any,
    *,
    arch: Arch = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    attention_dropout: float = 0.0,
) -> Any:
    """A small randomly initialised causal LM (Qwen2 or Llama) sized to the tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in ("qwen2", "llama"):
        raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
    head_dim = _check_sizes(hidden_size, num_heads, num_kv_heads, num_layers)
    if intermediate_size is None:
        # Llama's SwiGLU ratio 8/3, rounded up to a multiple of 32.
        intermediate_size = -(-(8 * hidden_size // 3) // 32) * 32
    if arch == "qwen2" and type(tokenizer).__name__ != "Qwen2Tokenizer":
        logger.warning(
            "a qwen2 model with a %s: AutoTokenizer reloads the tokenizer of any qwen2 "
            "checkpoint as Qwen2Tokenizer, which may tokenise differently (save_tiny checks)",
            type(tokenizer).__name__,
        )
    ids = _special_ids(tokenizer)
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads or num_heads,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "attention_dropout": attention_dropout,
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
    }
    # Qwen2 (and vLLM's CPU Qwen2) derive head_dim; Llama takes it explicitly.
    config: Any = (
        LlamaConfig(head_dim=head_dim, **kwargs) if arch == "llama" else Qwen2Config(**kwargs)
    )
    # Weight init draws from the global RNG: fork it so building a model leaves it as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id = ids["pad"], ids["bos"]
    # A chat turn ends with <|im_end|>, a plain completion with the EOS token: stop at either.
    im_end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
    stops = [i for i in (ids["eos"], im_end) if i is not None]
    gen.eos_token_id = stops if len(stops) > 1 else (stops[0] if stops else None)
    logger.info(
        "built a tiny %s: %d layers, hidden %d, %d heads × %d, %.2fM parameters",
        arch,
        num_layers,
        hidden_size,
        num_heads,
        head_dim,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def _check_sizes(hidden_size: int, num_heads: int, num_kv_heads: int | None, layers: int) -> int:
    """head_dim, after checking the sizes make a model vLLM can serve too."""
    if hidden_size <= 0 or num_heads <= 0 or layers <= 0:
        raise UserError("hidden_size, num_heads and num_layers must be positive")
    if hidden_size % num_heads:
        raise UserError(
            f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}: vLLM's Qwen2 "
            "takes head_dim = hidden_size / num_heads and would build other shapes"
        )
    head_dim = hidden_size // num_heads
    if head_dim < 32 or head_dim % 2:
        raise UserError(
            f"head_dim = hidden_size / num_heads = {hidden_size}/{num_heads} = {head_dim}; it "
            "must be an even number ≥ 32 (rotary embeddings and vLLM's attention kernels); "
            f"use at most {max(hidden_size // 32, 1)} heads or a larger hidden_size"
        )
    if head_dim % 16:
        logger.warning("head_dim=%d is not a multiple of 16; some vLLM kernels reject it", head_dim)
    if num_kv_heads is not None and (num_kv_heads <= 0 or num_heads % num_kv_heads):
        raise UserError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    return head_dim


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    eos = tokenizer.eos_token_id
    return {
        "eos": eos,
        "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    }


def save_tiny(model: Any, tokenizer: Any, folder: str | Path, *, check: bool = True) -> Path:
    """Save model and tokenizer so ``from_pretrained(folder)`` loads both back (checked)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if check:
        _check_reload(tokenizer, folder, getattr(model.config, "model_type", "?"))
    return folder


def _check_reload(tokenizer: Any, folder: Path, model_type: str) -> None:
    """Raise if ``AutoTokenizer`` loads ``folder`` as a tokenizer that tokenises differently."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(folder)
    added = "".join(list(tokenizer.get_added_vocab())[-6:])
    probes = ["Response: Hello, World! 1995\n### naïve café", f"Items:{added}, then {added}"]
    if len(loaded) == len(tokenizer) and all(
        loaded(p)["input_ids"] == tokenizer(p)["input_ids"] for p in probes
    ):
        return
    raise UserError(
        f"AutoTokenizer.from_pretrained({str(folder)!r}) gives a {type(loaded).__name__} that "
        f"tokenises differently from the {type(tokenizer).__name__} saved there: transformers "
        f"picks the tokenizer class from the model type ({model_type!r}) and rebuilds its "
        "pipeline around the saved vocabulary. Pair kind='sentencepiece' tokenizers with "
        "arch='llama'."
    )
