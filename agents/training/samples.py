"""What the learner learns from: a completed response with its reward and value targets (:class:`Sample`),
and a searched state with its visit distribution (:class:`DistillSample`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sample:
    """One completed response and what to learn from it."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    reward: float  # the return of the episode (GRPO groups it with the other samples of its problem)
    group: str  # problem id: the GRPO group
    value_positions: tuple[int, ...] = ()  # prefix lengths (into the completion) whose value to train
    value_targets: tuple[float, ...] = ()  # their targets in [-1, 1] (final outcome or MCTS Q)
    # per completion token under the behaviour policy: the student's log-probs at the first learner step that
    # trained on the sample (PPO's old policy); None: not yet trained on, computed by this step (ratio 1)
    old_logprobs: tuple[float, ...] | None = None
    ref_logprobs: tuple[float, ...] | None = None  # per completion token under the reference; None: computed
    ref_version: int | None = None  # the reference_version ref_logprobs were computed under (None: trusted as given)
    truncated: bool = False  # the episode ran out of steps or tokens before it ended on its own
    advantages: tuple[float, ...] | None = None  # per completion token (tree self-play); None: the group's


@dataclass(frozen=True)
class Logprobs:
    """What a learner step computed for a sample that lacked it: the caller stores it with the sample's record,
    so that the next step on the same sample reads it there (no cache in the learner, none in checkpoints)."""

    old: tuple[float, ...] | None  # the behaviour log-probs (None: the sample carried them)
    ref: tuple[float, ...] | None  # the reference log-probs (None: carried, or the loss needs none)
    ref_version: int | None = None


@dataclass(frozen=True)
class DistillSample:
    """A searched state: its K candidates and the root visit distribution over them."""

    state_ids: tuple[int, ...]  # solve prompt + response so far
    candidates: tuple[tuple[int, ...], ...]
    visit_probs: tuple[float, ...]


def carried(samples: Sequence[Sample], computed: Sequence[Logprobs | None]) -> list[Sample]:
    """``samples`` with what a learner step computed for them (its ``last_logprobs``) stored in them: the next
    step on the same samples reads its old policy and reference there."""
    out = []
    for sample, fresh in zip(samples, computed, strict=True):
        if fresh is not None and fresh.old is not None:
            sample = replace(sample, old_logprobs=fresh.old)
        if fresh is not None and fresh.ref is not None:
            sample = replace(sample, ref_logprobs=fresh.ref, ref_version=fresh.ref_version)
        out.append(sample)
    return out
