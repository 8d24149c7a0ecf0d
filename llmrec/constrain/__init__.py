"""Constrained decoding: the item trie and its logits processors."""
