"""Evaluation: metrics (pure), the protocol, baselines and reports."""
