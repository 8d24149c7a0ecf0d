"""Shared test configuration: quiet, offline, and GPU tests skipped without a GPU."""

from __future__ import annotations

import os

import pytest

# Tests never reach a model hub; real code paths that would are exercised on local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests when no CUDA device is present (CI has none)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The vLLM engine and tiny model shared by every `vllm` test module (one engine per session).
pytest_plugins = ["tests.vllm_fixtures"]
