"""llmrec: generative recommendation with LLMs.

Stages (one subpackage each, data flowing one way): ``data`` → ``indexing`` → ``tokens`` →
``instruct`` → ``train`` → ``constrain`` / ``recommend`` / ``serve`` → ``eval``.
"""

__version__ = "0.1.0"
