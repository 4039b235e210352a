"""Supervised fine-tuning data: reference solutions as (solve prompt, response) token sequences.

The prompt is the solve prompt the environment searches in and the evaluator grades in
(:func:`azgym.prompts.solve_prompt_ids` under the same prompt style), so SFT trains exactly the context
the student later answers in. The response is the reference solution as GSM8K writes it (reasoning
lines, then ``#### <number>``) followed by the model's end-of-sequence token, the same end the RL
learner appends to a finished response. Labels are :data:`IGNORE_INDEX` on the prompt and on padding:
the loss is on response tokens only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch

from azgym.prompts import solve_prompt_ids
from azgym.tasks.base import DataError, Problem

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a token that is not trained on (PyTorch's cross-entropy default)
_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_annotations(solution: str) -> str:
    """A GSM8K solution without its calculator annotations.

    >>> strip_annotations("She sold 48/2 = <<48/2=24>>24 clips.\\n#### 24")
    'She sold 48/2 = 24 clips.\\n#### 24'
    """
    return _ANNOTATION.sub("", solution)


def sft_example(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> dict[str, list[int]]:
    """One training sequence: ``input_ids`` = prompt + response, ``labels`` masked on the prompt.

    >>> sft_example([5, 6], [7, 8])
    {'input_ids': [5, 6, 7, 8], 'labels': [-100, -100, 7, 8]}
    """
    if not prompt_ids or not response_ids:
        raise ValueError(
            f"an SFT example needs a prompt and a response, got {len(prompt_ids)} and {len(response_ids)} tokens"
        )
    return {
        "input_ids": [int(t) for t in (*prompt_ids, *response_ids)],
        "labels": [IGNORE_INDEX] * len(prompt_ids) + [int(t) for t in response_ids],
    }


def build_examples(
    lm,
    problems: Sequence[Problem],
    *,
    system: str | None,
    eos_token_id: int,
    annotations: bool = True,
    max_length: int = 0,
) -> tuple[list[dict[str, list[int]]], int]:
    """SFT examples of ``problems`` through ``lm``'s solve prompt; returns them and how many were dropped
    for being longer than ``max_length`` tokens (0: no limit). A long example is dropped, never cut: a
    cut response would lose its ``####`` line, the very format SFT is meant to teach."""
    missing = [p.id for p in problems if not p.solution.strip()]
    if missing:
        raise DataError(
            f"{len(missing)} problems (e.g. {missing[0]}) have no reference solution; SFT trains on GSM8K-style "
            "solutions ending in '#### <number>'"
        )
    examples, dropped = [], 0
    for problem in problems:
        solution = problem.solution if annotations else strip_annotations(problem.solution)
        example = sft_example(solve_prompt_ids(lm, system, problem.question), [*lm.encode(solution), eos_token_id])
        if max_length and len(example["input_ids"]) > max_length:
            dropped += 1
            continue
        examples.append(example)
    if dropped:
        logger.info("dropped %d of %d examples longer than %d tokens", dropped, len(problems), max_length)
    return examples, dropped


def split_heldout(problems: Sequence[Problem], heldout_size: int, train_size: int = 0):
    """``(train, heldout)``: the last ``heldout_size`` problems are held out (never trained on), the
    first ``train_size`` of the rest are trained on (0: all of them).

    >>> split_heldout(list(range(10)), 3, 4)
    ([0, 1, 2, 3], [7, 8, 9])
    """
    if heldout_size < 1 or heldout_size >= len(problems):
        raise DataError(
            f"held-out size {heldout_size} must be in [1, {len(problems) - 1}] for {len(problems)} "
            "problems; lower --heldout-size"
        )
    rest, heldout = list(problems[:-heldout_size]), list(problems[-heldout_size:])
    return (rest[:train_size] if train_size else rest), heldout


class Collator:
    """Right-pads a list of examples into ``input_ids`` / ``attention_mask`` / ``labels`` tensors
    (padding gets ``pad_id`` and the label :data:`IGNORE_INDEX`)."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled (response) tokens: the SFT loss, written out.

    ``logits`` [B, T, V] predict token t + 1 at position t; ``labels`` [B, T] (:data:`IGNORE_INDEX` = not
    trained). Equal to what a transformers causal LM returns as ``loss`` for the same labels.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum().clamp(min=1)
