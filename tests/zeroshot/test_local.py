"""Local zero-shot decoding names catalog items and nothing else: 100 % of outputs over fuzzed
catalogs, every decoding mode, adversarial generation settings, exclusions and candidate lists."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.config import ConfigError
from llmrec.eval.protocol import EvalConfig, evaluate
from llmrec.zeroshot.build import build_zeroshot
from llmrec.zeroshot.config import ZeroShotSection
from tests.zeroshot.conftest import item_tables

# Settings that, left alone, would make generate stop mid-title, never stop, or strip every
# allowed token before the trie sees the scores; and sampling settings at their extremes.
ADVERSARIAL_DEFAULTS = {
    "min_new_tokens": 40,
    "no_repeat_ngram_size": 1,
    "repetition_penalty": 50.0,
    "suppress_tokens": None,  # set per tokenizer: its separator and EOS
}
LIST_SETTINGS = [
    {},
    {"do_sample": True, "temperature": 5.0},
    {"do_sample": True, "top_k": 1},
    {"do_sample": True, "top_p": 0.01, "temperature": 0.1},
    {"do_sample": True, "temperature": 1.0, "repetition_penalty": 100.0, "min_p": 0.9},
    {"num_beams": 3, "min_new_tokens": 99, "bad_words_ids": [[5], [6, 7]]},
]


def _adversarial(model: Any, tokenizer: Any) -> None:
    gen = model.generation_config
    gen.min_new_tokens = ADVERSARIAL_DEFAULTS["min_new_tokens"]
    gen.no_repeat_ngram_size = ADVERSARIAL_DEFAULTS["no_repeat_ngram_size"]
    gen.repetition_penalty = ADVERSARIAL_DEFAULTS["repetition_penalty"]
    newline = tokenizer.encode("x\n", add_special_tokens=False)[-1]
    gen.suppress_tokens = [newline, tokenizer.eos_token_id]


def _check(
    items: list[list[str]],
    catalog: set[str],
    exclude: list[set[str]],
    allowed: list[set[str]],
    k: int,
) -> None:
    for row, banned, ok in zip(items, exclude, allowed, strict=True):
        named = [i for i in row if i]
        assert set(named) <= catalog, "an output is not a catalog item"
        assert len(named) == len(set(named)), "an item repeats"
        assert not set(named) & banned, "an excluded item came back"
        assert set(named) <= ok
        # Filled up to k whenever enough items are allowed (the trie never runs dry early).
        assert len(named) == min(k, len(ok))
        assert row[len(named) :] == [""] * (k - len(named))


# LLMREC_FUZZ_EXAMPLES raises the number of fuzzed cases for a longer soak (15 in CI).
@settings(
    max_examples=int(os.environ.get("LLMREC_FUZZ_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    item_tables(max_items=10),
    st.sampled_from(["beam", "exact", "list"]),
    st.sampled_from(LIST_SETTINGS),
    st.integers(1, 6),
    st.integers(0, 2**31),
)
def test_every_local_output_is_a_catalog_item(
    stack: tuple[Any, Any],
    items: pd.DataFrame,
    decoding: str,
    generation: dict[str, Any],
    k: int,
    seed: int,
) -> None:
    tokenizer, model = stack
    saved = copy.deepcopy(model.generation_config)
    try:
        _adversarial(model, tokenizer)
        _every_output_is_an_item(model, tokenizer, items, decoding, generation, k, seed)
    finally:
        model.generation_config = saved  # the model is shared by the other tests


def _every_output_is_an_item(
    model: Any,
    tokenizer: Any,
    items: pd.DataFrame,
    decoding: str,
    generation: dict[str, Any],
    k: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    ids = items["item_id"].tolist()
    section = ZeroShotSection(
        decoding=decoding,  # type: ignore[arg-type]
        generation=generation if decoding == "list" else {},
        num_beams=int(rng.integers(1, 5)),
        candidate_limit=int(rng.integers(1, len(ids) + 1)),
        seed=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constrained decoding says what it switched off
        rec = build_zeroshot(items, section, model=model, tokenizer=tokenizer)
        histories = [list(rng.choice(ids, size=int(rng.integers(0, 4)))) for _ in range(3)]
        exclude = [{i for i in ids if rng.random() < 0.5} for _ in histories]
        out, scores = rec.recommend(histories, k, exclude)
    catalog = set(ids)
    allowed = [catalog - ex for ex in exclude]
    _check(out, catalog, exclude, allowed, k)
    assert scores.shape == (3, k)
    assert rec.stats.validity == 1.0
    assert set(rec.stats.methods) <= {"trie"}


def test_candidate_lists_restrict_answers_and_shape_the_prompt(stack: tuple[Any, Any]) -> None:
    tokenizer, model = stack
    titles = ["Heat", "Heat Wave", "Toy Story", "Toy Story 2", "Cape Fear", "Cape Fear"]
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(6)],
            "title": titles,
            "year": ["1995", "1996", "1995", "1999", "1962", "1991"],
        }
    )
    rec = build_zeroshot(
        items, ZeroShotSection(candidate_limit=3), model=model, tokenizer=tokenizer
    )
    out, _ = rec.recommend([["0"], ["0"]], 5, [{"0", "2", "3"}, {"0"}])
    request, _ = rec.last[0]
    assert request.candidates is not None and set(request.candidates) == {"1", "4", "5"}
    assert "Candidate items:" in request.text and "- Cape Fear (1991)" in request.text
    assert set(out[0][:3]) == {"1", "4", "5"} and out[0][3:] == ["", ""]
    assert rec.last[1][0].candidates is None and "Candidate" not in rec.last[1][0].text
    # The candidate order is seeded per history: the same twice, another for another seed.
    again = rec.request(["0"], 5, {"0", "2", "3"}).candidates
    assert again == request.candidates


def test_long_histories_are_cut_to_fit_the_context(stack: tuple[Any, Any]) -> None:
    tokenizer, model = stack
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(30)], "title": [f"Film {i} " * 5 for i in range(30)]}
    )
    section = ZeroShotSection(max_history=30, max_prompt_tokens=400)
    rec = build_zeroshot(items, section, model=model, tokenizer=tokenizer)
    request = rec.request([str(i) for i in range(30)], 3)
    assert len(rec.backend.encode(request.system, request.text)) <= 400  # type: ignore[attr-defined]
    shown = request.text.count("\n- ")
    assert 1 < shown < 30
    assert "Film 29" in request.text and "Film 0 " not in request.text  # the newest are kept


def test_zero_shot_in_the_evaluation_protocol(stack: tuple[Any, Any]) -> None:
    """Full catalog and candidate lists: the candidate protocol is honoured, nothing invalid."""
    from llmrec.data import leave_one_out

    tokenizer, model = stack
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", t) for u in range(6) for t, i in enumerate(rng.permutation(25)[:6])]
    split = leave_one_out(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(25)], "title": [f"Movie {i}" for i in range(25)]}
    )
    rec = build_zeroshot(
        items, ZeroShotSection(candidate_limit=10), model=model, tokenizer=tokenizer
    )
    catalog = items["item_id"].tolist()
    full = evaluate(rec, split, EvalConfig(ks=[5], bootstrap=0), catalog=catalog, exclude_seen=True)
    assert full.metrics["invalid@5"] == 0.0
    ranked = evaluate(rec, split, EvalConfig(ks=[5], bootstrap=0, candidates=8), catalog=catalog)
    assert ranked.metrics["invalid@5"] == 0.0
    assert all(r.candidates is not None and len(r.candidates) == 8 for r, _ in rec.last)


def test_settings_a_backend_cannot_honour_are_refused(stack: tuple[Any, Any]) -> None:
    tokenizer, model = stack
    items = pd.DataFrame({"item_id": ["a"], "title": ["Heat"]})
    with pytest.raises(ConfigError, match="free text"):
        build_zeroshot(items, ZeroShotSection(prompt="explain"), model=model, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="decoding=beam"):
        build_zeroshot(
            items,
            ZeroShotSection(backend="vllm", decoding="list"),
            model=model,
            tokenizer=tokenizer,
        )
    with pytest.raises(ConfigError, match="is a candidates prompt, not full"):
        build_zeroshot(
            items, ZeroShotSection(prompt="rank_candidates"), model=model, tokenizer=tokenizer
        )


def test_exact_candidate_scoring_equals_a_full_width_beam(stack: tuple[Any, Any]) -> None:
    """The per-candidate trie ranks a candidate list as a beam over the whole trie does."""
    tokenizer, model = stack
    titles = ["Heat", "Heat Wave", "Heat Wave II", "Toy Story", "Toy Story 2", "Fargo", "Ça ira"]
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(7)], "title": titles})
    exclude = [{"i0", "i5"}]  # five candidates remain
    exact = build_zeroshot(
        items, ZeroShotSection(candidate_limit=5), model=model, tokenizer=tokenizer
    )
    beam = build_zeroshot(
        items,
        ZeroShotSection(candidate_limit=5, candidate_scoring="decode", num_beams=7),
        model=model,
        tokenizer=tokenizer,
    )
    # Candidates without the longest title: their trie is shallower than the catalog's.
    short, _ = exact.recommend([["i1"]], 3, [{"i0", "i2", "i5", "i6"}])
    assert sorted(short[0]) == ["i1", "i3", "i4"]
    got_exact, scores_exact = exact.recommend([["i1"]], 5, exclude)
    got_beam, scores_beam = beam.recommend([["i1"]], 5, exclude)
    assert exact.last[0][0].text == beam.last[0][0].text  # one prompt
    by_exact = dict(zip(got_exact[0], scores_exact[0], strict=True))
    by_beam = dict(zip(got_beam[0], scores_beam[0], strict=True))
    assert set(by_exact) == set(by_beam) == {"i1", "i2", "i3", "i4", "i6"}
    for item, score in by_exact.items():
        assert score == pytest.approx(by_beam[item], rel=1e-4, abs=1e-3)
