"""The scoring model behind the perplexity reward: which model, loaded once, scored off the event loop.

``tier`` names the scoring model's size class, the first model of
:data:`azgym.teachers.loading.TIERS`: ``local`` is SmolLM2-135M-Instruct (azgym's default student, on
a CPU and offline), ``free`` Qwen2.5-1.5B-Instruct, ``production`` Qwen2.5-7B-Instruct (both from the
Hub, for a GPU). An explicit ``scoring_model`` (a short name, a local directory such as a merged
checkpoint, or a Hub id) takes its place.
"""

from __future__ import annotations

import asyncio
import threading

from azgym.lm.base import LanguageModel
from azgym.prompts import solve_prompt_ids
from azgym.rewards import inverse_perplexity
from azgym.teachers.loading import TIERS

_LOCK = threading.Lock()  # one load or forward pass at a time: a backend and its prefix cache are not thread-safe


def scoring_model_name(tier: str, scoring_model: str = "") -> str:
    """The model that scores perplexity: ``scoring_model`` if given, else the first model of ``tier``."""
    return scoring_model or TIERS[tier][0]


def load_scorer(name: str, device: str = "cpu") -> LanguageModel:
    """The scoring model ``name`` on ``device``, loaded on first use and shared afterwards."""
    from azgym.lm.hf import shared_backend

    return shared_backend(name, device)


def response_inverse_perplexity(lm: LanguageModel, system: str | None, question: str, response: str) -> float:
    """``exp(mean log p(token))`` of ``response`` under ``lm``, after the solve prompt the policy saw
    (``system`` and ``question`` in ``lm``'s chat template): 1 / perplexity, in (0, 1]; 0.0 when empty."""
    response_ids = lm.encode(response)
    if not response_ids:
        return 0.0
    [logprobs] = lm.score([solve_prompt_ids(lm, system, question)], [response_ids])
    return inverse_perplexity(logprobs)


async def score_response(name: str, device: str, system: str | None, question: str, response: str) -> float:
    """:func:`response_inverse_perplexity` under the model ``name``, in a worker thread."""

    def run() -> float:
        with _LOCK:
            return response_inverse_perplexity(load_scorer(name, device), system, question, response)

    return await asyncio.to_thread(run)
