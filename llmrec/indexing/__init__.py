"""Semantic IDs: item text → embeddings → collision-free codes."""
