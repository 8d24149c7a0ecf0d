"""GRPO rollouts and DPO negatives: 100 % catalog items under adversarial generation settings,
beam groups of distinct items in beam order (also when TRL splits a group between processes),
samples with the policy's full-softmax log-probabilities, hard negatives never the target."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from llmrec.data.prepare import PreparedData
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.prompting import RunDecoding
from llmrec.tokens import build_tiny_model
from llmrec.train.align_config import WindowsSection
from llmrec.train.policy import training_windows, unique_prompts
from llmrec.train.rollouts import Rollouts, hard_negatives, item_tokens

G = 4


@dataclass
class FakeTrainer:
    """What the rollout function reads from TRL's GRPOTrainer."""

    model: Any
    args: Any
    process_index: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def accelerator(self) -> Any:
        return SimpleNamespace(
            unwrap_model=lambda m: m,
            process_index=self.process_index,
            num_processes=1,
            is_main_process=True,
        )

    def _log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(value)


@pytest.fixture(scope="module")
def setup(synthetic_run: Path) -> tuple[RunDecoding, dict[str, Any], Any]:
    decoding = RunDecoding.load(synthetic_run)
    split = PreparedData.load(synthetic_run).split
    windows = training_windows(split.table["train_items"].tolist(), WindowsSection(per_user=2), 0)
    by_text = unique_prompts(windows, decoding.prompts)
    model = build_tiny_model(decoding.prompts.tokenizer, hidden_size=64, num_layers=1, num_heads=2)
    return decoding, by_text, model.eval()


def adversarial(model: Any, trie: Any) -> Any:
    """Generation settings and weights that push hard towards tokens that name no item."""
    sid = set(trie.edge_token.tolist())
    others = [t for t in range(model.get_output_embeddings().weight.shape[0]) if t not in sid]
    with torch.no_grad():
        model.get_output_embeddings().weight[others[:20]] *= 50.0  # junk tokens dominate
    gc = model.generation_config
    gc.min_new_tokens, gc.suppress_tokens = 8, sorted(sid)[:5]
    gc.bad_words_ids = [[t] for t in sorted(sid)[5:9]]
    gc.no_repeat_ngram_size = 1
    return SimpleNamespace(
        temperature=3.0,
        top_k=2,
        top_p=0.5,
        min_p=None,
        repetition_penalty=5.0,
        generation_kwargs={"min_length": 100, "forced_eos_token_id": others[0]},
    )


def _prompts(by_text: dict[str, Any], n_groups: int) -> list[str]:
    return [p for p in list(by_text)[:n_groups] for _ in range(G)]


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_rollouts_name_only_catalog_items_under_adversarial_settings(
    setup: tuple[RunDecoding, dict[str, Any], Any], mode: str
) -> None:
    decoding, by_text, _ = setup
    model = build_tiny_model(decoding.prompts.tokenizer, hidden_size=64, num_layers=1, num_heads=2)
    args = adversarial(model, decoding.trie)
    trainer = FakeTrainer(model, args)
    prompts = _prompts(by_text, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Rollouts(decoding, by_text, mode, G, batch_size=4)(prompts, trainer)
    catalog = set(decoding.trie.item_ids)
    tokens = item_tokens(decoding)
    assert len(out["completion_ids"]) == len(prompts) == len(out["item"])
    assert all(item in catalog for item in out["item"])  # 100 % valid
    assert all(ids == tokens[i] for ids, i in zip(out["completion_ids"], out["item"], strict=True))
    assert trainer.metrics["rollouts/invalid"] == [0.0]
    for g in range(6):
        rows = range(g * G, (g + 1) * G)
        assert all(
            out["prompt_ids"][r] == decoding.prompts.encode(by_text[prompts[r]].history)
            for r in rows
        )
        if mode == "beam":  # G distinct items, in beam order
            assert len({out["item"][r] for r in rows}) == G
            assert [out["rank"][r] for r in rows] == list(range(G))
            logp = [out["logp"][r] for r in rows]
            assert logp == sorted(logp, reverse=True)
    if mode == "beam":
        assert out["logprobs"] is None
    else:
        assert [len(lp) for lp in out["logprobs"]] == [len(c) for c in out["completion_ids"]]
        assert all(v <= 0 for lp in out["logprobs"] for v in lp)
        assert 0 < trainer.metrics["rollouts/valid_mass"][0] < 1


def test_sample_logprobs_are_the_policys_full_softmax(
    setup: tuple[RunDecoding, dict[str, Any], Any],
) -> None:
    decoding, by_text, model = setup
    args = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0)
    prompts = _prompts(by_text, 2)
    out = Rollouts(decoding, by_text, "sample", G)(prompts, FakeTrainer(model, args))
    for prompt_ids, ids, logprobs in zip(
        out["prompt_ids"], out["completion_ids"], out["logprobs"], strict=True
    ):
        seq = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            logits = model(seq).logits[0, len(prompt_ids) - 1 : -1].float()
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(logprobs), expected, rtol=1e-4, atol=1e-4)


def test_a_group_split_between_processes_keeps_its_beam_ranks(
    setup: tuple[RunDecoding, dict[str, Any], Any],
) -> None:
    """TRL hands process p rows p·n … p·n + n − 1 of the batch: with n = 6 and G = 4, group 1
    is rows 4-5 on process 0 and rows 6-7 on process 1."""
    decoding, by_text, model = setup
    args = SimpleNamespace(temperature=1.0)
    prompts = _prompts(by_text, 3)
    rollouts = Rollouts(decoding, by_text, "beam", G)
    whole = rollouts(prompts, FakeTrainer(model, args))
    first = rollouts(prompts[:6], FakeTrainer(model, args, process_index=0))
    second = rollouts(prompts[6:], FakeTrainer(model, args, process_index=1))
    assert first["item"] + second["item"] == whole["item"]
    assert first["rank"] + second["rank"] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="different prompts"):
        rollouts(prompts[1:7], FakeTrainer(model, args))


def test_hard_negatives_are_the_best_wrong_items(
    setup: tuple[RunDecoding, dict[str, Any], Any],
) -> None:
    decoding, by_text, model = setup
    rec = HFRecommender(model, decoding.prompts, decoding.trie, mode="beam")
    windows = list(by_text.values())[:5]
    negatives = hard_negatives(rec, windows, 3, exclude_history=True)
    catalog = set(decoding.trie.item_ids)
    for w, neg in zip(windows, negatives, strict=True):
        assert len(set(neg)) == 3 and set(neg) <= catalog
        assert w.target not in neg and not set(neg) & set(w.history)
    # As wide as the catalog: every item but the target, each once.
    every = hard_negatives(rec, windows, len(catalog))
    assert all(set(neg) == catalog - {w.target} for w, neg in zip(windows, every, strict=True))


class FakeClient:
    """TRL's VLLMClient as the rollouts use it: answers with one catalog item per prompt."""

    def __init__(self, item_tokens: list[list[int]]) -> None:
        self.items, self.calls = item_tokens, []

    def generate(self, prompts: list[list[int]], **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        ids = [self.items[i % len(self.items)] + [0, 0] for i in range(len(prompts))]  # padded
        return {"completion_ids": ids, "logprobs": [[[-0.5]] * len(c) for c in ids]}


def test_sample_rollouts_on_a_vllm_server_send_the_trie_with_each_request(
    setup: tuple[RunDecoding, dict[str, Any], Any], tmp_path: Path
) -> None:
    decoding, by_text, model = setup
    tokens = item_tokens(decoding)
    client = FakeClient(list(tokens.values())[:3])
    trainer = FakeTrainer(model, SimpleNamespace(temperature=0.7, generation_kwargs=None))
    trainer.use_vllm = True  # type: ignore
    trainer.vllm_generation = SimpleNamespace(mode="server", vllm_client=client)  # type: ignore
    rollouts = Rollouts(decoding, by_text, "sample", G, trie_path=tmp_path / "trie.pt")
    out = rollouts(_prompts(by_text, 2), trainer)
    (call,) = client.calls
    assert call["generation_kwargs"]["vllm_xargs"]["llmrec_trie"] == str(tmp_path / "trie.pt")
    assert call["generation_kwargs"]["stop_token_ids"] == [decoding.trie.end_token_id]
    assert call["max_tokens"] == decoding.trie.depth and call["temperature"] == 0.7
    assert (tmp_path / "trie.pt").is_file()  # saved once for the server to load
    assert all(item in tokens for item in out["item"])
    assert out["completion_ids"][0] == next(iter(tokens.values()))  # cut after the end token
    assert [len(lp) for lp in out["logprobs"]] == [len(c) for c in out["completion_ids"]]
    with pytest.raises(Exception, match="vllm_mode=server"):
        trainer.vllm_generation = SimpleNamespace(mode="colocate")  # type: ignore
        Rollouts(decoding, by_text, "sample", G)(_prompts(by_text, 1), trainer)
