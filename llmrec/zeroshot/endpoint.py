"""Any OpenAI-compatible endpoint (OpenAI, vLLM's ``api_server``, llama.cpp, TGI …) over plain
HTTP with ``httpx``.

The base URL and the key come from environment variables named in the config (by default
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``), never from the config itself, so run folders and
logs hold no secrets. Requests run ``concurrency`` at a time; 429 and 5xx answers are retried
with exponential back-off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llmrec.errors import MissingExtraError, UserError
from llmrec.zeroshot.config import EndpointSection

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ChatPrompt:
    """One request: an optional system message and the user message."""

    system: str | None
    user: str


@dataclass
class EndpointClient:
    """Completions from one model behind an OpenAI-compatible API."""

    base_url: str
    model: str
    api_key: str | None = None
    cfg: EndpointSection | None = None

    @classmethod
    def from_env(cls, model: str, cfg: EndpointSection) -> EndpointClient:
        """Base URL and key from the environment variables ``cfg`` names."""
        base = os.environ.get(cfg.base_url_env) or DEFAULT_BASE_URL
        key = os.environ.get(cfg.api_key_env) or None
        return cls(base.rstrip("/"), model, key, cfg)

    def __post_init__(self) -> None:
        try:
            import httpx
        except ImportError:
            raise MissingExtraError("httpx", "zeroshot", "the OpenAI-compatible backend") from None
        self.cfg = self.cfg or EndpointSection()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=self.cfg.timeout_s
        )

    def _body(self, prompt: ChatPrompt) -> tuple[str, dict[str, Any]]:
        assert self.cfg is not None
        common: dict[str, Any] = {
            **self.cfg.extra_body,
            "model": self.model,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.seed is not None:
            common["seed"] = self.cfg.seed
        if self.cfg.api == "completions":
            text = f"{prompt.system}\n\n{prompt.user}" if prompt.system else prompt.user
            return "/completions", {**common, "prompt": text + "\n"}
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        messages.append({"role": "user", "content": prompt.user})
        return "/chat/completions", {**common, "messages": messages}

    def complete(self, prompt: ChatPrompt) -> str:
        """The model's answer text to one prompt."""
        assert self.cfg is not None
        path, body = self._body(prompt)
        for attempt in range(self.cfg.max_retries + 1):
            response = self._client.post(path, json=body)
            retry = response.status_code == 429 or response.status_code >= 500
            if not retry or attempt == self.cfg.max_retries:
                break
            wait = min(30.0, 2.0**attempt)
            logger.warning(
                "%s%s: HTTP %d, retrying in %.0f s", self.base_url, path, response.status_code, wait
            )
            time.sleep(wait)
        if response.status_code != 200:
            raise UserError(
                f"{self.base_url}{path} answered HTTP {response.status_code}: "
                f"{response.text[:300]}",
                field="endpoint",
            )
        choice = response.json()["choices"][0]
        if self.cfg.api == "completions":
            return str(choice.get("text") or "")
        return str((choice.get("message") or {}).get("content") or "")

    def complete_many(self, prompts: Sequence[ChatPrompt]) -> list[str]:
        """Answers in order, ``concurrency`` requests at a time."""
        assert self.cfg is not None
        if self.cfg.concurrency == 1 or len(prompts) == 1:
            return [self.complete(p) for p in prompts]
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(self.complete, prompts))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
