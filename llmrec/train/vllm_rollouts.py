"""Constrained GRPO samples on a vLLM server (TRL's ``use_vllm=True, vllm_mode="server"``).

The server runs the same trie constraint as every other decoding path: start it with the
processor and let each request opt in through ``vllm_xargs``::

    LLMREC_TRIE_DIRS=runs/ml100k trl vllm-serve --model runs/ml100k/sft/model \\
        -- --logits-processors llmrec.constrain.vllm:TrieLogitsProcessor

(``trl vllm-serve`` hands every argument after ``--`` to ``vllm serve`` as it is; the processor
opens tries only inside ``LLMREC_TRIE_DIRS``). The rollout
function saves the run's trie once to a file both sides can read (same machine or shared disk)
and sends ``vllm_xargs={"llmrec_trie": path, ...}`` with each request; TRL syncs the policy's
weights into the server before every rollout.

Log-probabilities: TRL starts the server with ``--logprobs-mode processed_logprobs``, so the
returned ones are the *renormalised constrained* distribution, while the loss uses the full
softmax: the importance ratio TRL computes then carries the valid mass Z (≈ 0.99 on a SID
model, see ``rollouts/valid_mass`` on the HF path) besides the engine/trainer mismatch it is
meant for. Colocated engines are built by TRL 1.16 without logits processors, so colocate mode
cannot constrain and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmrec.constrain.trie import ItemTrie
from llmrec.constrain.vllm import constraint_args
from llmrec.errors import UserError


def server_samples(
    client: Any,
    prompt_ids: Sequence[Sequence[int]],
    trie: ItemTrie,
    trie_path: str | Path,
    args: Any,
) -> tuple[list[list[int]], list[list[float]]]:
    """One constrained sample per prompt row through TRL's ``VLLMClient``: completion ids
    (end token included) and their per-token log-probabilities."""
    kwargs = dict(getattr(args, "generation_kwargs", None) or {})
    kwargs["vllm_xargs"] = {**kwargs.get("vllm_xargs", {}), **constraint_args(trie_path)}
    kwargs["stop_token_ids"] = [trie.end_token_id]
    out = client.generate(
        prompts=[list(p) for p in prompt_ids],
        n=1,
        temperature=float(getattr(args, "temperature", 1.0) or 1.0),
        top_p=float(getattr(args, "top_p", 1.0)),
        top_k=int(getattr(args, "top_k", 0) or 0),
        min_p=float(getattr(args, "min_p", None) or 0.0),
        repetition_penalty=float(getattr(args, "repetition_penalty", 1.0)),
        max_tokens=trie.depth,
        logprobs=0,
        generation_kwargs=kwargs,
    )
    completions, logprobs = [], []
    for ids, lps in zip(out["completion_ids"], out["logprobs"], strict=True):
        ids = list(ids)
        if trie.end_token_id in ids:
            ids = ids[: ids.index(trie.end_token_id) + 1]
        completions.append(ids)
        logprobs.append([float(lp[0]) for lp in lps][: len(ids)])
    return completions, logprobs


def sample_on_server(
    trainer: Any, prompt_ids: Sequence[Sequence[int]], trie: ItemTrie, trie_path: Path
) -> tuple[list[list[int]], list[list[float]]]:
    """This process's rows sampled on the trainer's vLLM server (the main process holds the
    client: every process's prompts go through it, each gets its own rows back)."""
    from accelerate.utils import broadcast_object_list, gather_object

    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "server":
        raise UserError(
            "sample rollouts on vLLM need vllm_mode=server (TRL builds colocated engines "
            "without logits processors, so they cannot constrain); or use_vllm=false",
            field="training.vllm_mode",
        )
    acc = trainer.accelerator
    if acc.is_main_process and not trie_path.is_file():
        from llmrec.constrain.vllm import save_trie

        save_trie(trie, trie_path)
    rows = list(prompt_ids)
    everyone = gather_object(rows) if acc.num_processes > 1 else rows
    result: list[Any] = [None]
    if acc.is_main_process:
        result = [server_samples(generation.vllm_client, everyone, trie, trie_path, trainer.args)]
    if acc.num_processes > 1:
        broadcast_object_list(result, from_process=0)
    completions, logprobs = result[0]
    start = acc.process_index * len(rows)
    return completions[start : start + len(rows)], logprobs[start : start + len(rows)]
