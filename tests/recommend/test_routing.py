"""Routing pieces without a model: a weighted slice of a sliced LoRA is the plain LoRA it
claims to be, the router file round-trips, vLLM's LoRA settings are sized from the adapters,
and users are represented, clustered and gated as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.recommend.adapters import (
    AdapterSpec,
    Router,
    lora_engine_config,
    safe_name,
    slice_lora,
)
from llmrec.recommend.vllm import EngineConfig
from llmrec.train.user_groups import build_groups, heavy_users, prefix_histograms


@settings(max_examples=25, deadline=None)
@given(
    slices=st.integers(1, 4),
    rank=st.integers(1, 3),
    data=st.data(),
)
def test_a_weighted_slice_is_the_plain_lora_of_its_weights(
    slices: int, rank: int, data: st.DataObject
) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    a = torch.randn(slices * rank, 5, generator=gen)
    b = torch.randn(6, slices * rank, generator=gen)
    weights = {s: data.draw(st.sampled_from([0.0, 0.25, 1.0, -0.5])) for s in range(slices)}
    if not any(weights.values()):
        weights[0] = 1.0
    tensors = {"m.lora_A.weight": a, "m.lora_B.weight": b, "m.user_gate.weight": a}
    out, config = slice_lora(tensors, {"r": slices * rank, "lora_alpha": 9}, rank, 2.0, weights)
    kept = sum(1 for w in weights.values() if w)
    assert config["r"] == rank * kept and config["lora_alpha"] / config["r"] == 2.0 / rank
    assert set(out) == {"m.lora_A.weight", "m.lora_B.weight"}  # the gate is no LoRA matrix
    want = sum(
        w * b[:, s * rank : (s + 1) * rank] @ a[s * rank : (s + 1) * rank]
        for s, w in weights.items()
    )
    torch.testing.assert_close(out["m.lora_B.weight"] @ out["m.lora_A.weight"], want)


def _router(tmp_path, n_users: int = 5) -> Router:  # type: ignore[no-untyped-def]
    adapters = {
        "cluster-0": AdapterSpec({0: 1.0}, "adapters/cluster-0"),
        "user-9": AdapterSpec({0: 0.25, 1: 0.75}, None),
    }
    users = {f"u{i}": "cluster-0" for i in range(n_users)} | {"9": "user-9"}
    return Router(tmp_path, "key", "mixture", 2, 8, 16.0, adapters, users, {"9": 1})


def test_the_router_file_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    router = _router(tmp_path)
    router.save({"note": 1})
    again = Router.load(tmp_path)
    assert again == router
    assert again.route("9") == "user-9" and again.route("new") is None
    assert again.rank("cluster-0") == 8 and again.max_rank == 16
    assert again.index == {"cluster-0": 0, "user-9": 1}


def test_vllm_lora_settings_are_sized_from_the_adapters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    router = _router(tmp_path)
    cfg = lora_engine_config(router, EngineConfig(max_num_seqs=256), adapter_mb=1.0, num_beams=10)
    # 2 adapters: 2 slots, both cached; rank 16 is a rank vLLM accepts.
    assert (cfg.enable_lora, cfg.max_loras, cfg.max_cpu_loras, cfg.max_lora_rank) == (
        True,
        2,
        2,
        16,
    )
    many = Router(
        tmp_path,
        "k",
        "mixture",
        3,
        8,
        16.0,
        {f"a{i}": AdapterSpec({0: 0.5, 1: 0.3, 2: 0.2}) for i in range(1000)},
        {},
    )
    cfg = lora_engine_config(
        many, EngineConfig(max_num_seqs=64), adapter_mb=2.0, num_beams=1, slots_budget_gb=0.1
    )
    # Rank 24 → 32; slots: ≤ sequences per step (64) and ≤ 0.1 GiB / (2 MB × 32/24) = 38.
    assert cfg.max_lora_rank == 32 and cfg.max_loras == 38 and cfg.max_cpu_loras == 1000
    # Beams of 10: a step of 64 sequences holds 6 users, so 6 adapters at most.
    cfg = lora_engine_config(many, EngineConfig(max_num_seqs=64), adapter_mb=2.0, num_beams=10)
    assert cfg.max_loras == 6 and cfg.max_cpu_loras == 1000


def test_safe_names() -> None:
    assert safe_name("cluster-3") == "cluster-3"
    assert safe_name("user-a/b") != safe_name("user-a_b") and "/" not in safe_name("user-a/b")


def test_prefix_histograms_and_groups() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    sid_map = SemanticIdMap(("a", "b", "c", "d"), codes, (2, 2))
    x = prefix_histograms([["a", "b"], ["c"], [], ["a", "zzz"]], sid_map, levels=2)
    # Level 1: 2 prefixes, level 2: 4; sqrt of shares, so each level's row has norm 1.
    assert x.shape == (4, 6)
    np.testing.assert_allclose(x[0], [1, 0, np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-6)
    np.testing.assert_allclose(x[2], 0)
    np.testing.assert_allclose(x[3], [1, 0, 1, 0, 0, 0], atol=1e-6)  # unknown items skipped
    assert heavy_users([3, 9, 9, 1], 3, 2) == [1, 2] and heavy_users([3, 9], 0, 5) == []
    histories = [["a", "b"]] * 5 + [["c", "d"]] * 5
    groups = build_groups(
        [str(i) for i in range(10)],
        histories,
        sid_map,
        clusters=2,
        heavy_min_interactions=2,
        max_heavy_users=1,
        seed=0,
    )
    assert len(set(groups.clusters[:5])) == 1 and groups.clusters[0] != groups.clusters[5]
    table, gated = groups.slice_table("clusters")
    assert table.shape == (10, 3) and table[0, 2] == 1.0 and not gated.any()  # user 0: heavy
    table, gated = groups.slice_table("mixture")
    assert gated.tolist() == [False] + [True] * 9
    w, b = groups.gate_init(temperature=0.5)
    logits = groups.features @ w.T + b
    d2 = ((groups.features[:, None] - groups.centroids[None]) ** 2).sum(-1)
    # softmax(W x + b) is the soft k-means assignment softmax(-d² / T).
    t = 0.5 * max(
        float(((groups.features - groups.centroids[groups.clusters]) ** 2).sum(1).mean()),
        1e-6 / 0.5,
    )
    p = torch.softmax(torch.tensor(logits), -1)
    q = torch.softmax(torch.tensor(-d2 / t), -1)
    torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        slice_lora({}, {}, 1, 1.0, {0: 0.0})
