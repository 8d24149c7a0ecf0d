"""Zero-shot recommendation: prompts from ``prompts/`` → an LLM → answers grounded to real items
(a title trie for local models, matching for endpoints), behind the ``Recommender`` protocol.

Entry points: ``llmrec.zeroshot.build.build_zeroshot`` (an item table and a loaded model) and
``zeroshot_from_run`` (a run directory and a ``ZeroShotSection``). Nothing is imported here, so
that configs can name ``llmrec.zeroshot.config`` without loading torch.
"""
