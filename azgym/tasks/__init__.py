"""Problem sources and graders (pure functions, no model code), and the task registry."""

from azgym.tasks import arithmetic, countdown, gsm8k
from azgym.tasks.base import DataError, Problem, Task

TASKS: dict[str, Task] = {"gsm8k": gsm8k, "arithmetic": arithmetic, "countdown": countdown}


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_problems(task: str, data: str = "", split: str = "train") -> list[Problem]:
    """Problems of ``task`` from ``data`` (``""``: the task's default data) for ``split``."""
    source = get_task(task)
    return source.load_problems(data or source.DEFAULT_DATA, split)


__all__ = ["TASKS", "DataError", "Problem", "Task", "arithmetic", "countdown", "get_task", "gsm8k", "load_problems"]
