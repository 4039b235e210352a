"""What every task shares: a problem record and the error raised for bad data."""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """A data source that is missing or holds a malformed row; the message names where and the fix."""


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question text, the gold answer and a reference solution."""

    id: str
    question: str
    gold: str
    solution: str = ""


PROMPT_STYLES = ("task", "bare")


def system_prompt_for(task, prompt: str = "task") -> str | None:
    """The system message of the solve prompt: the task's own (``"task"``), none (``"bare"``: the
    question alone as the user message) or any other string, used as given."""
    if prompt == "task":
        return task.SYSTEM_PROMPT
    if prompt == "bare":
        return None
    if not prompt.strip():
        raise ValueError("an empty system prompt: pass 'task', 'bare' or the system message text")
    return prompt


def solve_messages(system_prompt: str | None, question: str) -> list[dict[str, str]]:
    """The chat of the solve prompt: an optional system message, then the question."""
    user = [{"role": "user", "content": question}]
    return user if system_prompt is None else [{"role": "system", "content": system_prompt}, *user]
