"""The model to fine-tune: a tiny one built from a config or a pretrained one with the SID
vocabulary, optionally 4-bit (QLoRA), and the LoRA config that trains the new SID token rows.

**How the SID rows train under LoRA.** LoRA freezes the embedding matrices, so the rows of the
SID tokens added by the instruct stage would keep their initialisation and the model could never
learn to read or write items. Two PEFT mechanisms fix that (``lora.new_tokens``):

- ``trainable_tokens`` (default): PEFT's ``trainable_token_indices`` trains only the rows of the
  given token ids — a ``(n_sid_tokens, hidden)`` parameter per matrix, merged into the frozen
  matrix in the forward pass. On Qwen2.5-1.5B (151,936 × 1,536) that is 96 × 1,536 trained values
  instead of 233M, with no optimizer state for the rest, and the saved adapter stays megabytes.
- ``modules_to_save``: PEFT copies the whole embedding (and untied LM head) and trains every
  row: one extra matrix in memory per module, AdamW state for all of it (~2.8 GB in fp32 per
  matrix at 1.5B) and a ~1 GB adapter file; old token rows drift too. Kept for comparison.

With untied embeddings the LM head is listed in ``trainable_token_indices`` as well: its rows are
what scores a SID token on output, and without them the model could read SIDs but never learn to
emit them. With tied embeddings PEFT ties an adapter on the LM head to the embedding's adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from peft.utils.other import TrainableTokensWrapper

from llmrec.errors import MissingExtraError, UserError
from llmrec.train.config import SFTStageConfig, resolve_checkpointing

logger = logging.getLogger(__name__)

__all__ = [
    "TrainableTokensWrapperWithBias",
    "build_model",
    "embeddings_tied",
    "lora_config",
    "patch_trainable_tokens_bias",
    "require_qlora",
    "resolve_dtype",
]


def require_qlora() -> None:
    """Raise a clear error unless 4-bit QLoRA can run here (CUDA + bitsandbytes)."""
    if not torch.cuda.is_available():
        raise UserError(
            "finetune=qlora needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on CPU. "
            "Use finetune=lora (same adapters on an unquantized model) or finetune=full here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingExtraError("bitsandbytes", "quant", "finetune=qlora") from None


def bf16_supported() -> bool:
    """True where bf16 mixed precision is fast and exact enough: a CUDA GPU that supports it."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(cfg: SFTStageConfig) -> torch.dtype:
    """The dtype to load weights in (see ``SFTStageConfig.dtype``)."""
    if cfg.dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            cfg.dtype
        ]
    # Full fine-tuning keeps fp32 master weights (mixed precision autocasts the math); a frozen
    # LoRA base only needs to be read, so bf16 halves its memory where the GPU handles it.
    if cfg.finetune != "full" and cfg.model != "tiny" and bf16_supported():
        return torch.bfloat16
    return torch.float32


def embeddings_tied(model: Any) -> bool:
    """True if the output embedding shares its weight with the input embedding."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def build_model(cfg: SFTStageConfig, tokenizer: Any, sid_ids: Sequence[int]) -> Any:
    """The causal LM to fine-tune, sized for ``tokenizer`` (every SID token has a row)."""
    from llmrec.tokens import build_tiny_model, resize_embeddings

    if cfg.model == "tiny":
        model = build_tiny_model(
            tokenizer,
            arch=cfg.arch,
            hidden_size=cfg.tiny_hidden_size,
            num_layers=cfg.tiny_layers,
            num_heads=cfg.tiny_heads,
            tie_word_embeddings=cfg.tiny_tie_embeddings,
            attention_dropout=cfg.tiny_attention_dropout,
            max_position_embeddings=max(1024, cfg.max_length),
            seed=cfg.training.seed,
        )
        return model.to(resolve_dtype(cfg))
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg), "revision": cfg.revision}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.finetune == "qlora":
        require_qlora()
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if bf16_supported() else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        # One full copy per process: each data-parallel rank holds its own quantized model.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    if sid_ids:
        resize_embeddings(model, tokenizer, sid_ids, seed=cfg.training.seed)
    if cfg.finetune == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=resolve_checkpointing(
                cfg.training.gradient_checkpointing, pretrained=True
            ),
        )
    return model


def _leaf_name(model: Any, module: Any) -> str:
    """The attribute name of ``module`` inside ``model`` (e.g. ``embed_tokens``, ``lm_head``)."""
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def lora_config(cfg: SFTStageConfig, model: Any, sid_ids: Sequence[int]) -> Any:
    """The PEFT ``LoraConfig``: adapters on ``lora.target_modules``, SID rows trained."""
    from peft import LoraConfig

    ids = sorted({int(i) for i in sid_ids})
    tied = embeddings_tied(model)
    embed = _leaf_name(model, model.get_input_embeddings())
    head = _leaf_name(model, model.get_output_embeddings())
    kwargs: dict[str, Any] = {}
    if cfg.lora.new_tokens == "trainable_tokens":
        # Tied: a plain list targets the input embedding and PEFT ties an adapter on the head to
        # it. Untied: the head's SID rows need their own trainable rows (see the module docstring).
        kwargs["trainable_token_indices"] = ids if tied else {embed: ids, head: ids}
    else:
        kwargs["modules_to_save"] = [embed] if tied else [embed, head]
        kwargs["ensure_weight_tying"] = tied
    targets = cfg.lora.target_modules
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets[0] if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
        **kwargs,
    )


class TrainableTokensWrapperWithBias(TrainableTokensWrapper):
    """PEFT's TrainableTokensWrapper plus the ``bias`` attribute TRL's fused LM head reads."""

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias (None for embeddings and bias-free LM heads)."""
        return getattr(self.token_adapter.base_layer, "bias", None)


def patch_trainable_tokens_bias(model: Any) -> int:
    """Give PEFT's trainable-token wrappers in ``model`` a ``bias``; returns how many were patched.

    Workaround, kept in this one place until upstream fixes it (PEFT 0.21 / TRL 1.16): TRL's
    fused LM head reads ``lm_head.weight`` and ``lm_head.bias``; when ``trainable_token_indices``
    wraps the LM head (untied embeddings, or the tied adapter PEFT adds), the wrapper answers
    ``weight`` (the merged matrix) but raises ``AttributeError: 'TrainableTokensWrapper' object
    has no attribute 'bias'``. Only these instances get a subclass that forwards ``bias`` to the
    wrapped layer; nothing global changes. A wrapper that already has ``bias`` is left alone, so
    this becomes a no-op once upstream adds it. PEFT's own forward of a wrapped ``Linear``
    ignores its bias; LM heads of the supported families have none.
    """
    patched = 0
    for module in model.modules():
        if type(module) is TrainableTokensWrapper and not hasattr(module, "bias"):
            module.__class__ = TrainableTokensWrapperWithBias
            patched += 1
    return patched
