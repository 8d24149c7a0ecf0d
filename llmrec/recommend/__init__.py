"""Recommenders: the protocol, prompts, and the HF constrained-decoding backend."""
