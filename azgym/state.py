"""Positions in an episode and what one action does: small immutable records, no model inside."""

from __future__ import annotations

from dataclasses import dataclass

from azgym.tasks.gsm8k import Grade


@dataclass(frozen=True)
class EnvState:
    """Everything that defines a position in an episode; cheap to copy, holds no model."""

    problem_index: int
    response_ids: tuple[int, ...]
    depth: int  # steps taken
    seed: int  # episode seed: with the state it fixes the candidates
    pre_return: float = 0.0  # sum_t gamma**t * PRE_t so far
    episode_return: float = 0.0  # sum of rewards so far
    num_right_steps: int = 0
    num_wrong_steps: int = 0
    teachers: tuple[str, ...] = ()  # the teacher of each chosen step
    terminated: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class Transition:
    """What one action does: the next state, its reward (and each term), the grade at the end."""

    state: EnvState
    reward: float
    terms: dict[str, float]
    grade: Grade | None
