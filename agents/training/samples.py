"""What the learner learns from: a completed response with its reward and value targets (:class:`Sample`),
and a searched state with its visit distribution (:class:`DistillSample`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One completed response and what to learn from it."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    reward: float  # the return of the episode (GRPO groups it with the other samples of its problem)
    group: str  # problem id: the GRPO group
    value_positions: tuple[int, ...] = ()  # prefix lengths (into the completion) whose value to train
    value_targets: tuple[float, ...] = ()  # their targets in [-1, 1] (final outcome or MCTS Q)
    old_logprobs: tuple[float, ...] | None = None  # per completion token at sampling time; None: on-policy
    ref_logprobs: tuple[float, ...] | None = None  # per completion token under the reference; None: computed
    truncated: bool = False  # the episode ran out of steps or tokens before it ended on its own
    advantages: tuple[float, ...] | None = None  # per completion token (tree self-play); None: the group's


@dataclass(frozen=True)
class DistillSample:
    """A searched state: its K candidates and the root visit distribution over them."""

    state_ids: tuple[int, ...]  # solve prompt + response so far
    candidates: tuple[tuple[int, ...], ...]
    visit_probs: tuple[float, ...]
