from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from llmrec.indexing.quantizers import (
    QuantizerConfig,
    RQKMeansQuantizer,
    build_quantizer,
    default_codebook_size,
    quantizer_from_state_dict,
)

METHODS = ["rq_kmeans", "rq_vae"]


def small_cfg(method: str, **kw: object) -> QuantizerConfig:
    """A config small enough for a test to train in well under a second."""
    base: dict[str, object] = dict(
        method=method,
        levels=3,
        codebook_size=8,
        seed=0,
        hidden_dims=(32,),
        latent_dim=8,
        epochs=15,
        train_batch_size=64,
        lr=1e-3,
        dead_code_steps=10,
        progress=False,
    )
    base.update(kw)
    return QuantizerConfig(**base)  # type: ignore[arg-type]


def test_default_codebook_size() -> None:
    assert default_codebook_size(1_682) == 32
    assert default_codebook_size(10_000) == 64
    assert default_codebook_size(100_000) == 128
    assert default_codebook_size(1_000_000) == 256
    assert default_codebook_size(10) == 8
    assert default_codebook_size(1_682, levels=4) == 16
    with pytest.raises(ValueError):
        default_codebook_size(0)


def test_config_fields_have_help() -> None:
    for f in dataclasses.fields(QuantizerConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("method", METHODS)
def test_fit_encode_shapes_ranges_and_determinism(
    method: str, blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = blobs
    cfg = small_cfg(method)
    rng_state = torch.get_rng_state()
    codes = build_quantizer(method, cfg).fit_encode(x)
    assert torch.equal(rng_state, torch.get_rng_state())  # no global RNG use
    assert codes.shape == (x.shape[0], 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    again = build_quantizer(method, cfg).fit_encode(x)
    np.testing.assert_array_equal(codes, again)


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip(method: str, blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    q = build_quantizer(method, small_cfg(method)).fit(x)
    codes = q.encode(x)
    d = q.state_dict()
    assert all(isinstance(v, np.ndarray | int | float | str) for v in d.values())
    np.testing.assert_array_equal(quantizer_from_state_dict(d).encode(x), codes)
    # Also through np.savez, where scalars come back as 0-d arrays.
    buf = io.BytesIO()
    np.savez(buf, **d)  # type: ignore[arg-type]
    buf.seek(0)
    loaded = dict(np.load(buf))
    q2 = type(q).from_state_dict(loaded)
    np.testing.assert_array_equal(q2.encode(x), codes)
    np.testing.assert_array_equal(q2.encode(x[:5]), codes[:5])  # row-independent


@pytest.mark.parametrize("method", METHODS)
def test_last_level_distances_agree_with_encode(
    method: str, blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = blobs
    q = build_quantizer(method, small_cfg(method)).fit(x)
    codes = q.encode(x)
    d = q.last_level_distances(x[:20], codes[:20])
    assert d.shape == (20, 8) and (d >= 0).all()
    np.testing.assert_array_equal(d.argmin(1), codes[:20, -1])


@pytest.mark.parametrize(("method", "min_purity"), [("rq_kmeans", 1.0), ("rq_vae", 0.9)])
def test_first_level_recovers_blobs(
    method: str, min_purity: float, blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    x, truth = blobs
    cfg = small_cfg(method, codebook_size=4, epochs=40)
    first = build_quantizer(method, cfg).fit_encode(x)[:, 0]
    # Each blob should mostly share one first-level code, and different blobs different codes.
    majority = [np.bincount(first[truth == b], minlength=4).argmax() for b in range(4)]
    share = np.mean([np.mean(first[truth == b] == majority[b]) for b in range(4)])
    assert share >= min_purity
    assert len(set(majority)) == 4


def test_rq_vae_resets_dead_codes(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    resets = {}
    for steps in (0, 2):
        q = build_quantizer("rq_vae", small_cfg("rq_vae", codebook_size=32, dead_code_steps=steps))
        q.fit(x)
        resets[steps] = sum(h["dead_code_resets"] for h in q.history)  # type: ignore[attr-defined]
    assert resets[0] == 0 and resets[2] > 0


def test_rq_kmeans_balanced_codes() -> None:
    rng = np.random.default_rng(1)
    sizes = [200, 40, 20]
    x = np.concatenate([rng.normal(loc=5 * i, size=(s, 6)) for i, s in enumerate(sizes)])
    x = x.astype(np.float32)
    codes = build_quantizer("rq_kmeans", small_cfg("rq_kmeans", balanced=True)).fit_encode(x)
    cap = math.ceil(len(x) / 8)
    for level in range(3):
        assert np.bincount(codes[:, level], minlength=8).max() <= cap


def test_rq_kmeans_subsample_and_normalize(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    cfg = small_cfg("rq_kmeans", kmeans_sample=100, normalize=True)
    q = RQKMeansQuantizer(cfg).fit(x)
    codes = q.encode(x)
    # normalize=True makes codes invariant to each row's scale.
    scaled = x * np.linspace(0.5, 3.0, len(x), dtype=np.float32)[:, None]
    np.testing.assert_array_equal(q.encode(scaled), codes)


def test_codebook_size_none_uses_default(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = blobs
    q = build_quantizer("rq_kmeans", small_cfg("rq_kmeans", codebook_size=None)).fit(x)
    assert q.codebook_size == default_codebook_size(len(x), 3)


def test_errors(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown quantizer"):
        build_quantizer("pq", QuantizerConfig())
    for method in METHODS:
        with pytest.raises(RuntimeError, match="not fitted"):
            build_quantizer(method, small_cfg(method)).encode(blobs[0])
    with pytest.raises(ValueError, match="not an rq_vae"):
        q = build_quantizer("rq_kmeans", small_cfg("rq_kmeans")).fit(blobs[0])
        from llmrec.indexing.rqvae import RQVAEQuantizer

        RQVAEQuantizer.from_state_dict(q.state_dict())
