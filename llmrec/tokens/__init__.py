"""SID tokens: add them to a tokenizer, size the model's embeddings, check they round-trip; and a
tiny locally trained tokenizer + model for tests and the CPU quickstart."""

from llmrec.tokens.roundtrip import (
    RoundTripFailure,
    RoundTripReport,
    TokenizationError,
    default_contexts,
    require_sid_roundtrip,
    verify_sid_roundtrip,
)
from llmrec.tokens.tiny import CHATML_TEMPLATE, build_tiny_model, save_tiny, train_tokenizer
from llmrec.tokens.vocab import (
    EmbeddingResizeReport,
    add_sid_tokens,
    resize_embeddings,
    sid_token_ids,
)

__all__ = [
    "CHATML_TEMPLATE",
    "EmbeddingResizeReport",
    "RoundTripFailure",
    "RoundTripReport",
    "TokenizationError",
    "add_sid_tokens",
    "build_tiny_model",
    "default_contexts",
    "require_sid_roundtrip",
    "resize_embeddings",
    "save_tiny",
    "sid_token_ids",
    "train_tokenizer",
    "verify_sid_roundtrip",
]
