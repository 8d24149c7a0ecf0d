"""What the command line shows: llmrec's log lines and one progress bar per long step.

Upstream libraries print much the user cannot act on — deprecation and future warnings,
"tokenizing dataset" bars for every map, transformers' advisory log lines — which buries the
stage headers. ``quiet_upstream`` hides them unless ``-v`` asks for everything. When the output
is a file rather than a terminal, progress bars redraw rarely (tqdm's ``TQDM_MININTERVAL``), so
a log stays readable.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

UPSTREAM = (
    "transformers",
    "trl",
    "peft",
    "torch",
    "datasets",
    "accelerate",
    "sentence_transformers",
)


def quiet_upstream(verbose: bool) -> None:
    """Hide upstream warnings, advisory logs and per-map progress bars (unless ``verbose``)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    if verbose:
        return
    pattern = "|".join(UPSTREAM)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=f"({pattern})(\\.|$)")
    for name in UPSTREAM:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
