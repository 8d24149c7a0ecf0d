"""Instruction datasets: templates, tasks, and the instruct stage."""
