"""Training many adapters as one: a sliced LoRA whose slices each example weighs by its user.

One PEFT LoRA of rank ``S × r`` is trained by one TRL ``SFTTrainer``; forward hooks on every
``lora_A`` module multiply its output, row by row, by the example's slice weights (each of
the ``S`` weights repeated over its ``r`` rank rows), so example ``i`` sees
``ΔW_i = Σ_s w_is B_s A_s``. With one-hot weights (a cluster's or a heavy user's slice) the
gradient of every other slice is exactly zero for that example: each slice is trained on its
own group's examples only, all groups in the same steps. In mixture mode the weights are a
gate's softmax over the expert slices, computed from the user's vector by a linear layer that
trains with the LoRA (iLoRA's gated experts, on stock PEFT).

The gate is a module of the base model listed in PEFT's ``modules_to_save``, so checkpoints
and resume carry it like the LoRA matrices; each example's row in the user table travels as a
``gate_row`` column through TRL's collator to ``compute_loss``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from trl import SFTTrainer

GATE_MODULE = "user_gate"  # the gate's attribute on the base model
ROW = "gate_row"  # the dataset column naming each example's row of the user table


class UserGate(nn.Module):
    """Logits over the expert slices from a user's vector (a linear layer)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Start from ``weight`` [K, D] and ``bias`` [K] (``UserGroups.gate_init``)."""
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, K]."""
        return self.linear(features)


class SliceGate:
    """Per-example slice weights, applied to every ``lora_A`` output of a PEFT model."""

    def __init__(
        self,
        table: np.ndarray,
        gated: np.ndarray,
        features: np.ndarray,
        slice_rank: int,
        experts: int,
    ) -> None:
        """``table`` [n, S]: fixed weights; ``gated`` [n]: users whose first ``experts``
        weights come from the gate; ``features`` [n, D]: the gate's input."""
        self.table = torch.from_numpy(table)
        self.gated = torch.from_numpy(gated)
        self.features = torch.from_numpy(features)
        self.slice_rank = slice_rank
        self.experts = experts
        self.gate: nn.Module | None = None  # the trainable gate (PEFT's copy), mixture only
        self._current: torch.Tensor | None = None

    def weights(self, rows: torch.Tensor) -> torch.Tensor:
        """Slice weights [B, S] of the users in table rows ``rows``."""
        device = rows.device
        w = self.table.to(device)[rows]
        gated = self.gated.to(device)[rows]
        if self.gate is not None and bool(gated.any()):
            probs = torch.softmax(self.gate(self.features.to(device)[rows]).float(), dim=-1)
            head = torch.where(gated[:, None], probs, w[:, : self.experts])
            w = torch.cat([head, w[:, self.experts :]], dim=1)
        return w

    @contextlib.contextmanager
    def rows(self, rows: torch.Tensor) -> Iterator[None]:
        """Within the block, LoRA forwards are weighted for these users."""
        self._current = self.weights(rows).repeat_interleave(self.slice_rank, dim=1)
        try:
            yield
        finally:
            self._current = None

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        w = self._current
        if w is None:
            raise RuntimeError("a per-user LoRA ran without slice weights (no gate_row given)")
        if output.shape[0] != w.shape[0]:  # rows repeated (e.g. beams): same users, in order
            w = w.repeat_interleave(output.shape[0] // w.shape[0], dim=0)
        shape = (w.shape[0],) + (1,) * (output.dim() - 2) + (w.shape[1],)
        return output * w.view(shape).to(output.dtype)

    def install(self, model: nn.Module) -> int:
        """Hook every LoRA layer's ``lora_A`` of ``model`` (a ``PeftModel``); returns how many."""
        from peft.tuners.lora import LoraLayer

        n = 0
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for lora_a in module.lora_A.values():
                    lora_a.register_forward_hook(self._hook)
                    n += 1
        if self.experts and self.gated.any():
            self.gate = model.get_submodule(f"base_model.model.{GATE_MODULE}")
        return n


@dataclass
class KeepRows:
    """A collator that carries each example's ``gate_row`` past TRL's own collator."""

    collator: Any

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The wrapped collator's batch plus ``gate_row`` [B]."""
        rows = [int(e.pop(ROW)) for e in examples]
        batch = self.collator(examples)
        batch[ROW] = torch.tensor(rows, dtype=torch.long)
        return batch


class GatedSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with each batch's LoRA weighted by its examples' users."""

    def __init__(self, *args: Any, gate: SliceGate, **kwargs: Any) -> None:
        """As ``SFTTrainer``, plus the ``SliceGate`` installed on the PEFT model it builds."""
        super().__init__(*args, **kwargs)
        self.gate = gate
        if self.model is None or gate.install(self.model) == 0:
            raise ValueError("the model has no LoRA layers to weigh per user")
        self.data_collator = KeepRows(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and ROW not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ROW]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """SFT's loss with the LoRA weighted by the batch's ``gate_row`` users."""
        rows = inputs.pop(ROW)
        with self.gate.rows(rows):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
