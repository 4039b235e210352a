"""What every task shares: a problem record, the error raised for bad data, and the Task protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from azgym.errors import UserError


class DataError(UserError, ValueError):
    """A data source that is missing or holds a malformed row; the message names where and the fix."""


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question text, the gold answer and a reference solution."""

    id: str
    question: str
    gold: str
    solution: str = ""


class Task(Protocol):
    """A problem source and its grader: a module (or object) with these names.

    ``NAME`` keys the task in :data:`azgym.tasks.TASKS` and its solve prompt in
    :data:`azgym.prompts.TASK_SYSTEM_PROMPTS`; ``DEFAULT_DATA`` is what ``load_problems`` reads when
    no data is given.

    Optional: ``partial_credit(response, gold) -> float`` in [0, 1] (1.0 exactly when ``grade`` says
    correct), the credit a response earns short of a solution. The ``partial`` reward preset
    (:mod:`azgym.rewards`) pays it and needs a task that defines it (see :func:`has_partial_credit`).
    """

    NAME: str
    DEFAULT_DATA: str

    def load_problems(self, source: str | Path, split: str = "train") -> list[Problem]: ...

    def grade(self, response: str, gold: str) -> Any: ...

    def extract_answer(self, text: str, *, strict: bool = True) -> str | None: ...

    def has_answer_marker(self, text: str) -> bool: ...


def has_partial_credit(task: Task) -> bool:
    """Whether ``task`` defines the optional ``partial_credit(response, gold)``."""
    return callable(getattr(task, "partial_credit", None))
