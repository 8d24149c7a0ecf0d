"""LoRA with trained SID token rows, as a case table on a tiny model: after a few SFTTrainer
steps the new tokens' input and output rows moved while the frozen base weights (and, with
trainable tokens, every old token row) did not; tied and untied embeddings. Plus the TRL/PEFT
``bias`` shim and the QLoRA error on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from llmrec.config import ConfigError
from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.tokens import sid_token_ids
from llmrec.train.config import SFTStageConfig
from llmrec.train.data import load_sft_datasets
from llmrec.train.peft_setup import (
    TrainableTokensWrapperWithBias,
    build_model,
    lora_config,
    patch_trainable_tokens_bias,
    require_qlora,
)
from llmrec.train.sft import sft_training_args, train_sft


def _trainer(cfg: SFTStageConfig, run: Path, out: Path, peft_config: Any = "default") -> Any:
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(run / "instruct" / "tokenizer")
    ids = sid_token_ids(tokenizer, SemanticIdMap.load(run / "sids" / "sid_map.json"))
    train, _ = load_sft_datasets(cfg, run)
    model = build_model(cfg, tokenizer, ids)
    args = sft_training_args(cfg, out, "test")
    args.save_strategy = "no"
    config = lora_config(cfg, model, ids) if peft_config == "default" else peft_config(model, ids)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=config
    )
    trainer.sid_ids = ids
    return trainer


def _embedding_rows(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output embedding matrices as the forward pass sees them (adapters merged)."""
    return (
        model.get_input_embeddings().weight.detach().clone(),
        model.get_output_embeddings().weight.detach().clone(),
    )


CASES = [
    # tied, new_tokens, old token rows stay exactly as they were
    pytest.param(True, "trainable_tokens", True, id="tied-trainable_tokens"),
    pytest.param(False, "trainable_tokens", True, id="untied-trainable_tokens"),
    pytest.param(True, "modules_to_save", False, id="tied-modules_to_save"),
    pytest.param(False, "modules_to_save", False, id="untied-modules_to_save"),
]


@pytest.mark.parametrize(("tied", "new_tokens", "old_rows_frozen"), CASES)
def test_sid_rows_train_and_the_base_stays_frozen(
    tied: bool,
    new_tokens: str,
    old_rows_frozen: bool,
    run: Path,
    tmp_path: Path,
    make_cfg: Callable[..., SFTStageConfig],
) -> None:
    cfg = make_cfg(
        "finetune=lora",
        f"tiny_tie_embeddings={str(tied).lower()}",
        f"lora.new_tokens={new_tokens}",
        "lora.r=4",
        "train_samples=64",
    )
    trainer = _trainer(cfg, run, tmp_path / "out")
    ids = torch.tensor(trainer.sid_ids)
    patch_trainable_tokens_bias(trainer.model)
    base_before = {
        k: v.clone()
        for k, v in trainer.model.get_base_model().state_dict().items()
        if "lora_" not in k and "token_adapter" not in k and "modules_to_save" not in k
    }
    in_before, out_before = _embedding_rows(trainer.model)
    trainer.train()
    in_after, out_after = _embedding_rows(trainer.model)

    old = torch.ones(len(in_before), dtype=torch.bool)
    old[ids] = False
    # Input rows only move for tokens seen in a batch; output rows all get softmax gradient.
    assert (in_after[ids] != in_before[ids]).any(dim=1).sum() > len(ids) // 2
    assert (out_after[ids] != out_before[ids]).any(dim=1).all()
    if old_rows_frozen:
        assert torch.equal(in_after[old], in_before[old])
        assert torch.equal(out_after[old], out_before[old])
    if tied:
        assert torch.equal(in_after, out_after)
    # The frozen matrices themselves never change: everything trained lives in the adapter.
    base_after = trainer.model.get_base_model().state_dict()
    for name, before in base_before.items():
        assert torch.equal(base_after[name], before), name
    assert any(
        not torch.equal(p.detach(), torch.zeros_like(p))
        for n, p in trainer.model.named_parameters()
        if "lora_B" in n
    )


def test_untied_without_lm_head_the_output_rows_never_train(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    """Why lora_config lists the LM head: with the embedding alone, SID output rows stay put."""
    from peft import LoraConfig

    cfg = make_cfg("finetune=lora", "tiny_tie_embeddings=false", "train_samples=64")

    def embedding_only(model: Any, ids: list[int]) -> Any:
        return LoraConfig(
            r=4,
            target_modules=["q_proj"],
            task_type="CAUSAL_LM",
            trainable_token_indices={"embed_tokens": ids},
        )

    trainer = _trainer(cfg, run, tmp_path / "out", peft_config=embedding_only)
    ids = torch.tensor(trainer.sid_ids)
    in_before, out_before = _embedding_rows(trainer.model)
    trainer.train()
    in_after, out_after = _embedding_rows(trainer.model)
    assert (in_after[ids] != in_before[ids]).any()
    assert torch.equal(out_after, out_before)


def test_the_bias_shim_is_still_needed(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    """Canary: once TRL/PEFT fix this upstream, drop ``patch_trainable_tokens_bias``."""
    cfg = make_cfg(
        "finetune=lora", "tiny_tie_embeddings=false", "train_samples=16", "training.max_steps=1"
    )
    trainer = _trainer(cfg, run, tmp_path / "out")
    try:
        trainer.train()
    except AttributeError as err:
        assert "'TrainableTokensWrapper' object has no attribute 'bias'" in str(err)
    else:
        pytest.fail(
            "TRL's fused LM head now trains PEFT trainable tokens without the shim: "
            "remove patch_trainable_tokens_bias and this test"
        )


def test_patch_is_local_and_idempotent(
    run: Path, tmp_path: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    from peft.utils.other import TrainableTokensWrapper

    cfg = make_cfg("finetune=lora", "tiny_tie_embeddings=false", "train_samples=16")
    trainer = _trainer(cfg, run, tmp_path / "out")
    assert patch_trainable_tokens_bias(trainer.model) == 2  # embedding and LM head
    assert patch_trainable_tokens_bias(trainer.model) == 0
    head = trainer.model.get_output_embeddings()
    assert isinstance(head, TrainableTokensWrapperWithBias)
    assert isinstance(head, TrainableTokensWrapper) and head.bias is None
    assert trainer.model.get_input_embeddings().bias is None
    assert not hasattr(TrainableTokensWrapper, "bias")  # the class itself is untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_qlora_needs_cuda(run: Path, make_cfg: Callable[..., SFTStageConfig]) -> None:
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        require_qlora()
    # Fails before any data or model is loaded (the model name does not even exist).
    cfg = make_cfg("finetune=qlora", "model=/nonexistent/model")
    with pytest.raises(ValueError, match=r"needs a CUDA GPU.*finetune=lora"):
        train_sft(cfg, run)
    assert not (run / "sft").exists() and not (run / "sft.checkpoints").exists()


def test_qlora_of_a_tiny_model_is_a_config_error(
    run: Path, make_cfg: Callable[..., SFTStageConfig]
) -> None:
    with pytest.raises(ConfigError, match="qlora"):
        train_sft(make_cfg("finetune=qlora"), run)
