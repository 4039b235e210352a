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
class Judgement:
    """A complete response graded against its problem's gold answer (training only; evaluation never sees it)."""

    grade: Grade  # the task's grade: parsed answer, correct (strict), flexible_correct, format_ok
    solved: bool  # the one notion of success: correct under the env's answer rule (strict or flexible)
    outcome: float  # on the value scale: WIN / LOSS, or the partial credit's LOSS + (WIN - LOSS) * credit
    credit: float | None = None  # the partial credit in [0, 1] where the reward preset pays it


@dataclass(frozen=True)
class Transition:
    """What one action does: the next state, its reward (and each term), the judgement at the end."""

    state: EnvState
    reward: float
    terms: dict[str, float]
    judgement: Judgement | None  # None until the episode ends

    @property
    def grade(self) -> Grade | None:
        return self.judgement.grade if self.judgement else None
