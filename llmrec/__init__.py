"""llmrec: generative recommendation with LLMs.

Stages (one subpackage each, data flowing one way): ``data`` → ``indexing`` → ``tokens`` →
``instruct`` → ``train`` → ``constrain`` / ``recommend`` / ``serve`` → ``eval``.

``llmrec.load(run)`` gives a run's trained model as a ``Recommender``::

    import llmrec
    rec = llmrec.load("runs/quickstart")            # the newest trained stage, exact ranking
    items, scores = rec.recommend([["50", "181"]], k=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmrec.recommend.loading import load

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str) -> Any:
    """``llmrec.load`` is imported on first use (it pulls in torch and transformers)."""
    if name == "load":
        from llmrec.recommend.loading import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
