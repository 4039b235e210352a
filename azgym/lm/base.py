"""The language-model protocol every backend implements (transformers now, vLLM on a GPU).

Prompts are either text or token ids. Token ids are the exact form: the environment keeps a
response as the ids its teachers generated, so re-tokenising text never shifts a boundary.

Stop strings: generation of a sample ends with the first token after which its decoded text
contains a stop string; that token is kept, so ``text`` ends with (or contains, when the token
carries more characters) the stop string. An end-of-sequence token ends a sample too and is not
part of ``token_ids`` or ``text``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Prompt = str | Sequence[int]
FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True)
class Generation:
    """One sampled continuation."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # log-prob of each sampled token under the model (temperature 1)
    finish_reason: FinishReason


@runtime_checkable
class LanguageModel(Protocol):
    """Batched generation and scoring."""

    name: str
    vocab_size: int
    eos_token_id: int  # the token that ends a response

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat, ending where the assistant's reply begins."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_tokens: int | Sequence[int] = 64,
        stop: Sequence[str] = (),
        temperature: float | Sequence[float] = 1.0,
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Generation]]:
        """``n`` samples for each prompt; per-prompt values broadcast from scalars.

        With a seed, sample ``j`` of prompt ``i`` is drawn from its own generator seeded by
        ``(seed[i], j)``: the result does not depend on what else is in the batch.
        """
        ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        """Log-prob of each continuation token given its prompt: one float32 array per pair."""
        ...


def broadcast(value, count: int, name: str) -> list:
    """A scalar repeated ``count`` times, or a sequence checked to have ``count`` items."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} values for {count} prompts; pass one per prompt or a scalar")
    return list(value)


class TokenizerMixin:
    """Text, chat and per-prompt argument handling shared by backends built on a HF tokenizer."""

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        else:  # base models: a plain transcript
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return self.encode(text)

    def _ids(self, prompt: Prompt) -> list[int]:
        return self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]

    def _per_prompt(self, prompts: Sequence[Prompt], n: int, max_tokens, temperature, seed) -> list[tuple]:
        """(token ids, budget, temperature, seed) per prompt, scalars broadcast and checked."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        count = len(prompts)
        budgets = broadcast(max_tokens, count, "max_tokens")
        temps = broadcast(temperature, count, "temperature")
        seeds = broadcast(seed, count, "seed")
        return [(self._ids(p), int(b), float(t), s) for p, b, t, s in zip(prompts, budgets, temps, seeds, strict=True)]
