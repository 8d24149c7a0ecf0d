"""The per-user stage end to end on a synthetic run: the stage folder and its router, adapters
that each train on their own group only, a user's routed recommendations equal to their adapter
loaded by hand with PEFT, different clusters ranking differently, unknown users on the shared
model, adapter folders that plain PEFT loads without llmrec, and the gated mixture exported per
user as a plain LoRA that computes exactly what the gate computed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmrec.config import ConfigError, load_config
from llmrec.errors import UserError
from llmrec.recommend.adapters import Router, export_user_adapter
from llmrec.recommend.hf import HFRecommender
from llmrec.recommend.loading import load, load_model
from llmrec.recommend.prompting import RunDecoding
from llmrec.serve.server import check_adapter
from llmrec.train.config import SFTStageConfig
from llmrec.train.per_user import PerUserStageConfig, train_per_user
from llmrec.train.sft import train_sft
from tests.train.conftest import TINY

PER_USER = [
    "groups.clusters=2",
    "lora.r=2",
    "lora.alpha=4",
    "lora.dropout=0.0",
    "training.max_steps=6",
    "training.per_device_train_batch_size=8",
    "training.learning_rate=0.05",
    "training.warmup_steps=0",
    "training.logging_steps=1",
    "training.save_steps=100",
    "max_length=128",
]


def _per_user_run(base: Path, dest: Path, *overrides: str) -> Path:
    shutil.copytree(base, dest)
    cfg = load_config(PerUserStageConfig, None, [*PER_USER, *overrides])
    train_per_user(cfg, dest)
    return dest


@pytest.fixture(scope="module")
def sft_run(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic run with a tiny fully fine-tuned SFT model."""
    run = tmp_path_factory.mktemp("pu") / "run"
    shutil.copytree(synthetic_run, run)
    train_sft(load_config(SFTStageConfig, None, [*TINY, "train_samples=64"]), run)
    return run


@pytest.fixture(scope="module")
def clusters_run(sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clusters and one heavy user, each with an adapter."""
    dest = tmp_path_factory.mktemp("clusters") / "run"
    return _per_user_run(
        sft_run, dest, "groups.heavy_min_interactions=1", "groups.max_heavy_users=1"
    )


def _hf(run: Path, model: Any) -> HFRecommender:
    decoding = RunDecoding.load(run)
    return HFRecommender(model.eval(), decoding.prompts, decoding.trie, mode="exact")


def _histories(run: Path) -> dict[str, list[str]]:
    from llmrec.data.prepare import PreparedData

    cases = PreparedData.load(run).split.cases("test")
    return {
        str(u): list(map(str, h)) for u, h in zip(cases["user_id"], cases["history"], strict=True)
    }


def test_the_stage_writes_a_router_and_lora_only_adapters(clusters_run: Path) -> None:
    folder = clusters_run / "per_user"
    router = Router.load(folder)
    assert router.mode == "clusters" and router.slices == 3 and router.slice_rank == 2
    heavy = json.loads((folder / "router.json").read_text())["heavy_users"]
    assert len(heavy) == 1
    assert sorted(router.adapters) == sorted(["cluster-0", "cluster-1", f"user-{heavy[0]}"])
    assert router.route(heavy[0]) == f"user-{heavy[0]}"
    assert {router.route(u) for u in router.users} == set(router.adapters)
    assert router.route("nobody") is None and router.route(None) is None
    info = json.loads((folder / "model_info.json").read_text())
    assert info["base"] == {
        "kind": "stage",
        "stage": "sft",
        "key": json.loads((clusters_run / "sft" / "_DONE.json").read_text())["config_hash"],
    }
    for name in router.adapters:
        path = check_adapter(router.adapter_dir(name))  # LoRA matrices only: vLLM serves it
        config = json.loads((path / "adapter_config.json").read_text())
        assert config["r"] == 2 and config["lora_alpha"] == 4
        tensors = load_file(str(path / "adapter_model.safetensors"))
        # Every adapter trained: its B matrices moved off PEFT's zero init.
        assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if "lora_B" in k)
    with pytest.raises(UserError, match="bank of per-user adapters"):
        load_model(clusters_run, "per_user")


def test_each_slice_trains_on_its_own_group_only(sft_run: Path, tmp_path: Path) -> None:
    # A cluster with no examples keeps PEFT's zero B: nothing of the others' leaked into it.
    run = _per_user_run(sft_run, tmp_path / "run", "train_samples=40")
    router = Router.load(run / "per_user")
    users = set(router.users)
    sliced = load_file(str(run / "per_user" / "model" / "adapter_model.safetensors"))
    b = next(t for k, t in sliced.items() if "lora_B" in k)
    moved = [bool(b[:, s * 2 : (s + 1) * 2].abs().max() > 0) for s in range(router.slices)]
    assert all(moved) and len(users) == 30  # every cluster had examples here
    # The same check on a gate: the rows of one user move only their cluster's slice.
    from llmrec.train.gated_lora import SliceGate

    gate = SliceGate(
        np.eye(2, dtype=np.float32), np.zeros(2, bool), np.zeros((2, 1), np.float32), 2, 0
    )
    w = gate.weights(torch.tensor([1]))
    assert w.tolist() == [[0.0, 1.0]]


def test_router_equals_the_adapter_loaded_by_hand(clusters_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    router = Router.load(clusters_run / "per_user")
    histories = _histories(clusters_run)
    by_adapter: dict[str, str] = {}
    for user, name in router.users.items():
        by_adapter.setdefault(name, user)
    users = list(by_adapter.values())
    routed = load(clusters_run, "per_user", mode="exact")
    got, got_scores = routed.recommend([histories[u] for u in users], 5, None, users)
    export = clusters_run / "export" / "sft"
    for row, user in enumerate(users):
        base = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, router.adapter_dir(router.users[user]))
        want, want_scores = _hf(clusters_run, model).recommend([histories[user]], 5)
        assert got[row] == want[0]
        np.testing.assert_allclose(got_scores[row], want_scores[0], rtol=1e-5, atol=1e-5)


def test_users_of_different_clusters_rank_differently(clusters_run: Path) -> None:
    router = Router.load(clusters_run / "per_user")
    first = {router.clusters[u]: u for u in router.users if router.users[u].startswith("cluster")}
    a, b = first[0], first[1]
    history = _histories(clusters_run)[a]
    routed = load(clusters_run, "per_user", mode="exact")
    # The same history, scored as user a and as user b: only the adapter differs.
    items, scores = routed.recommend([history, history], 10, None, [a, b])
    assert items[0] != items[1] or not np.allclose(scores[0], scores[1])


def test_a_new_user_falls_back_to_the_shared_model(clusters_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    history = next(iter(_histories(clusters_run).values()))
    routed = load(clusters_run, "per_user", mode="exact")
    got = routed.recommend([history, history], 5, None, ["a-new-user", None])
    base = AutoModelForCausalLM.from_pretrained(clusters_run / "export" / "sft")
    want = _hf(clusters_run, base).recommend([history], 5)
    assert got[0][0] == got[0][1] == want[0][0]
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-5, atol=1e-5)


def test_an_adapter_folder_loads_in_plain_peft_without_llmrec(clusters_run: Path) -> None:
    folder = Router.load(clusters_run / "per_user").adapter_dir("cluster-0")
    script = f"""
import sys
sys.modules["llmrec"] = None  # any import of llmrec fails from here on
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained({str(clusters_run / "export" / "sft")!r})
ids = torch.tensor([[1, 2, 3, 4]])
before = base(ids).logits
model = PeftModel.from_pretrained(base, {str(folder)!r})
after = model(ids).logits
assert not torch.allclose(before, after), "the adapter changed nothing"
print("ok", model.peft_config["default"].r)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "2"]


def test_the_mixture_exports_each_user_as_the_gate_computed(sft_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _per_user_run(sft_run, tmp_path / "run", "mode=mixture")
    router = Router.load(run / "per_user")
    assert router.mode == "mixture" and len(router.adapters) == len(router.users) == 30
    user = sorted(router.users)[3]
    weights = router.adapters[router.users[user]].weights
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5) and len(weights) == 2
    # The gate trained: the saved gate differs from its soft k-means start.
    sliced = load_file(str(run / "per_user" / "model" / "adapter_model.safetensors"))
    assert any("user_gate" in k for k in sliced)
    out = export_user_adapter(run, user, tmp_path / "one")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # 2 experts × r 2
    check_adapter(out)
    # The exported adapter computes what the gated sliced LoRA computes for this user.
    from llmrec.train.gated_lora import GATE_MODULE, SliceGate, UserGate

    export = run / "export" / "sft"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export), out).eval()
    base = AutoModelForCausalLM.from_pretrained(export)
    dim = json.loads((run / "per_user" / "router.json").read_text())["representation"]["dim"]
    base.add_module(GATE_MODULE, UserGate(np.zeros((2, dim), np.float32), np.zeros(2, np.float32)))
    gated_model = PeftModel.from_pretrained(base, run / "per_user" / "model").eval()
    table = np.zeros((1, 2), np.float32)
    table[0, list(weights)] = list(weights.values())
    gate = SliceGate(table, np.zeros(1, bool), np.zeros((1, 1), np.float32), 2, 0)
    gate.install(gated_model)
    with torch.no_grad(), gate.rows(torch.tensor([0])):
        want = gated_model(ids).logits
    with torch.no_grad():
        got = plain(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_shared_mode_is_one_adapter_for_everyone(sft_run: Path, tmp_path: Path) -> None:
    run = _per_user_run(sft_run, tmp_path / "run", "mode=shared")
    router = Router.load(run / "per_user")
    assert list(router.adapters) == ["shared"] and set(router.users.values()) == {"shared"}


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"validation\.users"):
        from llmrec.train.per_user import check_config

        check_config(load_config(PerUserStageConfig, None, ["validation.users=5"]))


def test_http_picks_the_users_adapter_and_an_explicit_one_wins(clusters_run: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llmrec.serve.server import ServeConfig, build_app

    router = Router.load(clusters_run / "per_user")
    user = next(u for u, name in router.users.items() if name == "cluster-0")
    app = build_app(ServeConfig(stage="per_user", num_beams=10), clusters_run)
    routed = load(clusters_run, "per_user", mode="beam", num_beams=10)
    with TestClient(app) as client:
        assert set(client.get("/health").json()["adapters"]) == set(router.adapters)

        def items(body: dict[str, Any]) -> list[str]:
            response = client.post("/v1/recommend", json={"k": 5, **body})
            assert response.status_code == 200, response.text
            return [x["item_id"] for x in response.json()["items"]]

        own = items({"user_id": user})
        assert own == items({"user_id": user, "adapter": "cluster-0"})
        other = items({"user_id": user, "adapter": "cluster-1"})
        response = client.post("/v1/recommend", json={"user_id": user, "adapter": "nope"})
        assert response.status_code == 404
        from llmrec.serve.backends import ServingCatalog

        ids = RunDecoding.load(clusters_run).trie.item_ids
        catalog_history = list(ServingCatalog.from_run(clusters_run, ids).histories[user])
        anonymous = items({"history": catalog_history})
    exclude = [set(catalog_history)]
    want_own, _ = routed.recommend([catalog_history], 5, exclude, [user])
    want_other, _ = routed.pinned("cluster-1").recommend([catalog_history], 5, exclude, [user])
    want_shared, _ = routed.recommend([catalog_history], 5, exclude, [None])
    assert own == want_own[0] and other == want_other[0] and anonymous == want_shared[0]


def test_a_crashed_mixture_resumes_with_its_gate(sft_run: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                raise RuntimeError("killed at step 3")

    overrides = [*PER_USER, "mode=mixture", "training.save_steps=2"]
    cfg = load_config(PerUserStageConfig, None, overrides)
    reference = _per_user_run(sft_run, tmp_path / "reference", *overrides[len(PER_USER) :])
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    with pytest.raises(RuntimeError, match="killed at step 3"):
        train_per_user(cfg, run, callbacks=[Crash()])
    folder = train_per_user(load_config(PerUserStageConfig, None, overrides), run)
    assert json.loads((folder / "metrics.json").read_text())["resumed_from"] == "checkpoint-2"
    resumed = load_file(str(folder / "model" / "adapter_model.safetensors"))
    expected = load_file(str(reference / "per_user" / "model" / "adapter_model.safetensors"))
    assert resumed.keys() == expected.keys() and any("user_gate" in k for k in expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert Router.load(folder).adapters == Router.load(reference / "per_user").adapters


def test_every_per_user_recipe_loads_and_checks() -> None:
    from llmrec.train.per_user import check_config

    paths = sorted((Path(__file__).parents[2] / "recipes" / "per_user").glob("*.yaml"))
    assert paths
    for path in paths:
        check_config(load_config(PerUserStageConfig, path))
