"""The vLLM trie logits processor's old import path, kept so that
``--logits-processors llmrec.serve.processor:TrieLogitsProcessor`` keeps working.

The processor lives in ``llmrec.constrain.vllm`` beside the HF one."""

from llmrec.constrain.vllm import (
    ARG_EXCLUDE,
    ARG_PREFIX,
    ARG_TRIE,
    TrieLogitsProcessor,
    constraint_args,
    load_trie,
    save_trie,
)

__all__ = [
    "ARG_EXCLUDE",
    "ARG_PREFIX",
    "ARG_TRIE",
    "TrieLogitsProcessor",
    "constraint_args",
    "load_trie",
    "save_trie",
]
