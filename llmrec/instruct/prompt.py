"""The one prompt format: how a rendered prompt and completion become what the model reads.

A task template renders text; ``PromptFormat`` wraps it — as chat messages (conversational
data, for tokenizers with a chat template) or as plain strings — for the instruct stage's
dataset rows, for re-rendered training data, and for inference (evaluation, validation,
serving, rollouts), and tokenises a prompt exactly as TRL's ``SFTTrainer`` tokenises the prompt
of a prompt-completion example: through the chat template with ``add_generation_prompt=True``,
else plainly. The token that followed each completion in training (the chat template's
end-of-turn token, else EOS) is what ends an item in the trie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmrec.errors import UserError

Message = dict[str, str]


@dataclass(frozen=True)
class PromptFormat:
    """Chat messages (with an optional system message) or plain text."""

    conversational: bool
    system_prompt: str | None = None

    def prompt(self, text: str) -> str | list[Message]:
        """A dataset row's ``prompt``."""
        if not self.conversational:
            return text
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": text}]

    def completion(self, text: str) -> str | list[Message]:
        """A dataset row's ``completion``."""
        return [{"role": "assistant", "content": text}] if self.conversational else text

    def encode(self, tokenizer: Any, text: str) -> list[int]:
        """Prompt token ids, as SFT saw the prompt of an example."""
        prompt = self.prompt(text)
        if isinstance(prompt, str):
            return list(tokenizer(prompt)["input_ids"])
        out = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(out["input_ids"])

    def end_token_id(self, tokenizer: Any) -> int:
        """The token that follows a completion in training: end of turn in chat, else EOS."""
        if not self.conversational:
            if tokenizer.eos_token_id is None:
                raise UserError("has no eos_token_id", field="tokenizer")
            return int(tokenizer.eos_token_id)
        probe = "zq"  # any short text: we only look at what the template puts after it
        prompt = [{"role": "user", "content": "hi"}]
        head = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": probe}], tokenize=True, return_dict=True
        )["input_ids"]
        body = tokenizer(probe, add_special_tokens=False)["input_ids"]
        rest = list(full[len(head) + len(body) :])
        if list(full[: len(head)]) != list(head) or not rest:
            raise UserError(
                "its chat template does not show which token ends an assistant turn",
                field="tokenizer",
            )
        return int(rest[0])
