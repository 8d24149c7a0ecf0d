"""Words for the tiny tokenizers the constrained-decoding and serving tests train."""

WORDS = [
    "the",
    "user",
    "watched",
    "liked",
    "a",
    "movie",
    "then",
    "next",
    "item",
    "what",
    "comes",
    "after",
    "these",
]
