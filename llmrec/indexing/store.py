"""Save and load a fitted quantizer (safetensors: arrays as tensors, scalars as metadata).

safetensors writes no timestamps, so equal quantizers give equal bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.indexing.quantizers import Quantizer, quantizer_from_state_dict
from llmrec.io import atomic_path


def save_quantizer(path: str | Path, quantizer: Quantizer) -> None:
    """Write a quantizer's state atomically."""
    from safetensors.numpy import save_file

    state = quantizer.state_dict()
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    with atomic_path(path) as tmp:
        save_file(
            arrays, str(tmp), metadata={"llmrec_scalars": json.dumps(scalars, sort_keys=True)}
        )


def load_quantizer(path: str | Path) -> Quantizer:
    """Rebuild a fitted quantizer saved by ``save_quantizer``."""
    from safetensors import safe_open

    state: dict[str, Any] = {}
    with safe_open(str(path), framework="numpy") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            state[key] = fh.get_tensor(key)
        state.update(json.loads((fh.metadata() or {}).get("llmrec_scalars", "{}")))
    return quantizer_from_state_dict(state)
