"""SID tokens: atomic in every tokenizer family, embeddings resized and initialised sensibly,
round trip checked in real prompts; the tiny local tokenizer/model factory saves and reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec.indexing.sid_map import SemanticIdMap
from llmrec.tokens import (
    TokenizationError,
    add_sid_tokens,
    build_tiny_model,
    default_contexts,
    require_sid_roundtrip,
    resize_embeddings,
    save_tiny,
    sid_token_ids,
    train_tokenizer,
    verify_sid_roundtrip,
)

N_ITEMS, LEVELS, K = 300, 3, 16


@pytest.fixture(scope="module")
def sid_map() -> SemanticIdMap:
    rng = np.random.default_rng(0)
    flat = rng.choice(K**LEVELS, N_ITEMS, replace=False)
    codes = np.stack([flat // K**2, (flat // K) % K, flat % K], axis=1)
    return SemanticIdMap(tuple(f"i{n}" for n in range(N_ITEMS)), codes, (K,) * LEVELS)


@pytest.fixture(scope="module")
def corpus(sid_map: SemanticIdMap) -> list[str]:
    """Catalog text plus prompts full of SIDs, as the instruct stage trains its tokenizer on."""
    words = ["space", "love", "war", "toys", "comedy", "drama", "thriller", "western"]
    sids = sid_map.all_sids()
    texts = [f"Item {n}: a {words[n % 8]} movie about {words[(n * 3) % 8]}" for n in range(400)]
    texts += [
        f"History: {a}, {b}\n### Response:\n{c}"
        for a, b, c in zip(sids, sids[1:], sids[2:], strict=False)
    ]
    return texts


def _merging_tokenizer(sid_map: SemanticIdMap) -> object:
    """A byte-level BPE without the GPT-2 split regex, trained on SID-dense text: every SID token
    is in its base vocabulary, but merges such as '><b_' and '>,' cross token boundaries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sids = sid_map.all_sids()
    texts = [f"{a},{b}>\n{c}" for a, b, c in zip(sids, sids[1:], sids[2:], strict=False)] * 3
    texts += sid_map.vocabulary() * 30
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


# ---- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_roundtrip_holds_after_add_sid_tokens(
    kind: str, sid_map: SemanticIdMap, corpus: list[str]
) -> None:
    tok = train_tokenizer(corpus, 600, kind=kind)  # type: ignore[arg-type]
    assert tok.chat_template and tok.padding_side == "left"
    add_sid_tokens(tok, sid_map)
    report = require_sid_roundtrip(tok, sid_map)
    assert report.ok and report.n_items == N_ITEMS and not report.failures
    # every context (incl. both chat-template ones) for every item, + decode, + each token alone
    n_contexts = len(default_contexts(tok)) + 2
    assert report.n_checked == N_ITEMS * (n_contexts + 1) + LEVELS * K
    assert any("chat template" in c for c in report.contexts)
    # and inside a real prompt, by hand
    sid = sid_map.sid("i7")
    ids = tok("### Response:\n" + sid + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[-4:] == [*sid_map.tokens_of("i7"), tok.eos_token]
    assert tok.decode(ids, skip_special_tokens=True) == "### Response:\n" + sid


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_roundtrip_fails_without_sid_tokens(
    kind: str, sid_map: SemanticIdMap, corpus: list[str]
) -> None:
    tok = train_tokenizer(corpus, 600, kind=kind)  # type: ignore[arg-type]
    report = verify_sid_roundtrip(tok, sid_map, max_failures=3)
    assert not report.ok and report.n_failed == report.n_checked and len(report.failures) == 3
    with pytest.raises(TokenizationError, match=r"item 'i0' SID '<a_\d+><b_\d+><c_\d+>'") as err:
        require_sid_roundtrip(tok, sid_map)
    assert "add_sid_tokens()" in str(err.value) and "expected 3 tokens" in str(err.value)


def test_merging_tokenizer_fails_then_holds(sid_map: SemanticIdMap) -> None:
    tok = _merging_tokenizer(sid_map)
    vocab = tok.get_vocab()  # type: ignore[attr-defined]
    assert all(t in vocab for t in sid_map.vocabulary())  # the tokens exist ...
    assert "><" in vocab or any(t.startswith(">") and len(t) > 1 for t in vocab)
    with pytest.raises(TokenizationError) as err:  # ... but BPE merges across their borders
        require_sid_roundtrip(tok, sid_map)
    msg = str(err.value)
    assert "item 'i0'" in msg and "splits or merges SID tokens" in msg
    got = msg.split("tokenises as ")[1].split("]")[0]
    assert got != str(sid_map.tokens_of("i0"))

    base, n_before = tok.vocab_size, len(tok)  # type: ignore[attr-defined, arg-type]
    ids = add_sid_tokens(tok, sid_map)
    assert len(tok) == n_before  # type: ignore[arg-type]  # nothing new: the tokens became atomic
    assert all(i < base for i in ids) and ids == [vocab[t] for t in sid_map.vocabulary()]
    assert require_sid_roundtrip(tok, sid_map, contexts=[("Response:", ","), ("", ">\n")]).ok


def test_wordpiece_tokens_atomic_but_decode_adds_spaces(sid_map: SemanticIdMap) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    backend.train_from_iterator(["Response: the movie", *sid_map.all_sids()], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    add_sid_tokens(tok, sid_map)
    assert require_sid_roundtrip(tok, sid_map, check_decode=False).ok
    report = verify_sid_roundtrip(tok, sid_map)  # WordPiece decodes tokens joined by spaces
    assert report.n_failed == N_ITEMS and "decodes as '<a_" in report.failures[0].message()


def test_add_sid_tokens_is_idempotent(sid_map: SemanticIdMap, corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    n0 = len(tok)
    ids = add_sid_tokens(tok, sid_map)
    assert len(tok) == n0 + LEVELS * K and ids == list(range(n0, n0 + LEVELS * K))
    assert tok.convert_ids_to_tokens(ids) == sid_map.vocabulary()  # vocabulary order
    assert add_sid_tokens(tok, sid_map) == ids and len(tok) == n0 + LEVELS * K
    assert sid_token_ids(tok, sid_map) == ids
    added = tok.added_tokens_decoder[ids[0]]
    assert not added.special and not added.normalized  # kept by skip_special_tokens, raw match


def test_sid_token_ids_requires_the_tokens(sid_map: SemanticIdMap, corpus: list[str]) -> None:
    with pytest.raises(KeyError, match="add_sid_tokens"):
        sid_token_ids(train_tokenizer(corpus, 600), sid_map)


# ---- embeddings ------------------------------------------------------------------------------


def _spread(w: torch.Tensor) -> float:
    return float(w.std(0).pow(2).mean().sqrt())


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_resize_tied(arch: str, sid_map: SemanticIdMap, corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    model = build_tiny_model(tok, arch=arch, tie_word_embeddings=True)  # type: ignore[arg-type]
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_sid_tokens(tok, sid_map)
    rng_before = torch.random.get_rng_state()
    report = resize_embeddings(model, tok, ids, noise_std=0.02)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert (report.n_added, report.tied, report.init) == (LEVELS * K, True, "mean")
    emb = model.get_input_embeddings().weight
    assert emb.shape == (len(tok), old.shape[1]) and model.config.vocab_size == len(tok)
    assert model.get_output_embeddings().weight is emb  # still tied, nothing extra
    assert torch.equal(emb[: len(old)], old)  # old rows unchanged
    new = emb[ids].detach()
    dev = (new - old.mean(0)).norm(dim=1)  # ≈ mean, within noise of 0.02 × spread per dim
    assert float(dev.max()) < 0.02 * _spread(old) * old.shape[1] ** 0.5 * 1.5
    assert float(dev.min()) > 0 and len(torch.unique(new, dim=0)) == len(ids)
    with torch.no_grad():  # the model runs on SID tokens
        logits = model(**tok(["Response:" + sid_map.sid("i3")], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_attention_dropout_acts_in_training_only(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    model = build_tiny_model(tok, attention_dropout=0.5)
    assert model.config.attention_dropout == 0.5
    ids = tok(["the user watched these"], return_tensors="pt")
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(**ids).logits, model(**ids).logits)
        model.train()
        assert not torch.equal(model(**ids).logits, model(**ids).logits)


def test_resize_untied_with_bias(sid_map: SemanticIdMap, corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    model = build_tiny_model(tok, tie_word_embeddings=False)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)  # a head with a bias
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(0.5, 0.1, generator=torch.Generator().manual_seed(1))
    model.lm_head = head
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out, old_bias = head.weight.detach().clone(), head.bias.detach().clone()
    ids = add_sid_tokens(tok, sid_map)
    report = resize_embeddings(model, tok, ids)
    assert not report.tied and report.n_added == len(ids)
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings()
    assert inp.shape[0] == out.weight.shape[0] == out.bias.shape[0] == len(tok)
    assert out.weight is not inp
    assert torch.equal(out.weight[: len(old_out)], old_out)
    assert torch.equal(out.bias[: len(old_bias)], old_bias)
    assert torch.equal(inp[: len(old_in)], old_in)
    new_out = out.weight[ids].detach()
    dev = (new_out - old_out.mean(0)).norm(dim=1)
    assert float(dev.max()) < 0.02 * _spread(old_out) * old_out.shape[1] ** 0.5 * 1.5
    assert float(dev.min()) > 0 and torch.isfinite(new_out).all()
    assert not torch.allclose(new_out, inp[ids])  # output rows from output statistics
    assert torch.allclose(out.bias[ids], old_bias.mean().expand(len(ids)))


def test_resize_codebook_init(sid_map: SemanticIdMap, corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    model = build_tiny_model(tok)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_sid_tokens(tok, sid_map)
    vectors = np.random.default_rng(3).normal(size=(len(ids), 8)).astype(np.float32)
    report = resize_embeddings(model, tok, ids, init="codebook", codebook_vectors=vectors, seed=5)
    assert report.init == "codebook" and report.n_added == len(ids)
    new = model.get_input_embeddings().weight[ids].detach()
    target = float(old.norm(dim=1).mean())
    assert torch.allclose(new.norm(dim=1), torch.full((len(ids),), target), rtol=1e-4)
    assert len(torch.unique(new, dim=0)) == len(ids)  # distinct codes → distinct rows
    assert torch.equal(model.get_input_embeddings().weight[: len(old)], old)
    # nearby codes start nearby: cosine similarities follow those of the (centred) vectors
    centred = torch.as_tensor(vectors - vectors.mean(0))
    cos_v = torch.nn.functional.cosine_similarity(centred[:, None], centred[None], dim=-1)
    cos_e = torch.nn.functional.cosine_similarity(new[:, None], new[None], dim=-1)
    off = ~torch.eye(len(ids), dtype=torch.bool)
    assert float(np.corrcoef(cos_v[off].numpy(), cos_e[off].numpy())[0, 1]) > 0.8
    # seeded: the same seed gives the same rows
    again = build_tiny_model(train_tokenizer(corpus, 600))
    tok2 = train_tokenizer(corpus, 600)
    add_sid_tokens(tok2, sid_map)
    resize_embeddings(again, tok2, ids, init="codebook", codebook_vectors=vectors, seed=5)
    assert torch.equal(again.get_input_embeddings().weight[ids], new)


def test_resize_errors_padding_and_base_vocab(sid_map: SemanticIdMap, corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    model = build_tiny_model(tok)
    ids = add_sid_tokens(tok, sid_map)
    with pytest.raises(ValueError, match="codebook_vectors"):
        resize_embeddings(model, tok, ids, init="codebook")
    with pytest.raises(ValueError, match="codebook_vectors must be"):
        resize_embeddings(model, tok, ids, init="codebook", codebook_vectors=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="init must be"):
        resize_embeddings(model, tok, ids, init="zeros")  # type: ignore[arg-type]
    report = resize_embeddings(model, tok, ids, pad_to_multiple_of=64)
    assert report.new_rows % 64 == 0 and report.new_rows >= len(tok)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # never shrinks, and rows of tokens in the base vocabulary (trained) are kept
    merging = _merging_tokenizer(sid_map)
    small = build_tiny_model(merging)
    before = small.get_input_embeddings().weight.detach().clone()
    report = resize_embeddings(small, merging, add_sid_tokens(merging, sid_map))
    assert report.n_added == 0 and torch.equal(small.get_input_embeddings().weight, before)


# ---- tiny model factory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "arch"), [("bpe", "qwen2"), ("bpe", "llama"), ("sentencepiece", "llama")]
)
def test_tiny_model_save_and_reload(
    arch: str, kind: str, sid_map: SemanticIdMap, corpus: list[str], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_tokenizer(corpus, 600, kind=kind)  # type: ignore[arg-type]
    ids = add_sid_tokens(tok, sid_map)
    model = build_tiny_model(tok, arch=arch, tie_word_embeddings=arch == "qwen2")  # type: ignore[arg-type]
    resize_embeddings(model, tok, ids)
    assert model.config.model_type == arch and model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<|im_end|>"),
    ]
    folder = save_tiny(model, tok, tmp_path / "tiny")
    model2 = AutoModelForCausalLM.from_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder)
    texts = ["Response:" + sid_map.sid("i1"), "History: " + sid_map.sid("i2") + ", then"]
    batch = tok(texts, return_tensors="pt", padding=True)
    assert tok2(texts, padding=True)["input_ids"] == batch["input_ids"].tolist()
    assert tok2.padding_side == "left" and tok2.chat_template == tok.chat_template
    assert require_sid_roundtrip(tok2, sid_map, max_items=50).n_items == 50
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)
    tied = model2.get_output_embeddings().weight is model2.get_input_embeddings().weight
    assert tied == (arch == "qwen2")


def test_save_tiny_refuses_a_tokenizer_autotokenizer_would_change(
    corpus: list[str], tmp_path: Path
) -> None:
    # transformers 5 reloads the tokenizer of every qwen2 checkpoint as Qwen2Tokenizer (byte-level
    # BPE around the saved vocab), whatever tokenizer_config.json says: a SentencePiece one breaks.
    tok = train_tokenizer(corpus, 600, kind="sentencepiece")
    model = build_tiny_model(tok, arch="qwen2")
    with pytest.raises(ValueError, match=r"Qwen2Tokenizer.*arch='llama'"):
        save_tiny(model, tok, tmp_path / "bad")


def test_tiny_model_seeded_and_rng_neutral(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    state = torch.random.get_rng_state()
    a, b = build_tiny_model(tok, seed=1), build_tiny_model(tok, seed=1)
    c = build_tiny_model(tok, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize(
    ("hidden", "heads", "kv", "match"),
    [
        (96, 4, None, "head_dim"),  # 24 < 32
        (130, 4, None, "not a multiple of num_heads"),
        (128, 4, 3, "num_kv_heads"),
        (0, 4, None, "positive"),
    ],
)
def test_tiny_model_size_checks(
    hidden: int, heads: int, kv: int | None, match: str, corpus: list[str]
) -> None:
    tok = train_tokenizer(corpus[:50], 300)
    with pytest.raises(ValueError, match=match):
        build_tiny_model(tok, hidden_size=hidden, num_heads=heads, num_kv_heads=kv)
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model(tok, arch="gpt2")  # type: ignore[arg-type]


def test_train_tokenizer_is_deterministic_and_validates(corpus: list[str]) -> None:
    for kind in ("bpe", "sentencepiece"):
        a = train_tokenizer(corpus, 500, kind=kind)
        b = train_tokenizer(iter(corpus), 500, kind=kind)
        assert a.get_vocab() == b.get_vocab()
        assert {"<|im_start|>", "<|im_end|>"} <= set(a.all_special_tokens)
        assert a.pad_token_id is not None and a.eos_token_id is not None
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(corpus, 500, kind="wordpiece")  # type: ignore[arg-type]


def test_chat_template_marks_assistant_tokens(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, 600)
    msgs = [{"role": "user", "content": "Recommend."}, {"role": "assistant", "content": "toys"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nRecommend.<|im_end|>\n<|im_start|>assistant\ntoys<|im_end|>\n"
    out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "toys<|im_end|>"
