"""What a user sees of a state: the ``info`` dict beside each observation and the ``ansi`` rendering."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from azgym.state import EnvState
from azgym.tasks.base import Problem
from azgym.teachers import Candidate


def info(
    problem: Problem,
    response: str,
    state: EnvState,
    candidates: Sequence[Candidate],
    num_actions: int,
    terms: dict[str, float],
) -> dict[str, Any]:
    """The env's ``info``: the problem, the response so far, the candidates with their priors and the action
    mask (K entries, 1 on filled slots), the last step's reward terms and the return so far."""
    priors = np.zeros(num_actions, dtype=np.float32)
    mask = np.zeros(num_actions, dtype=np.int8)
    priors[: len(candidates)] = [c.prior for c in candidates]
    mask[: len(candidates)] = 1
    return {
        "problem_id": problem.id,
        "question": problem.question,
        "response": response,
        "depth": state.depth,
        "candidates": [c.text for c in candidates],
        "labels": [c.label for c in candidates],
        "priors": priors,
        "action_mask": mask,
        "reward_terms": dict(terms),
        "episode_return": state.episode_return,
    }


def ansi(problem: Problem, response: str, state: EnvState, max_steps: int, grade, candidates) -> str:
    """The text ``render_mode="ansi"`` shows: question, response, status, the grade at the end, the candidates."""
    lines = [f"[{problem.id}] {problem.question}", "--- response ---", response]
    status = "terminated" if state.terminated else "truncated" if state.truncated else "running"
    lines.append(f"--- depth {state.depth}/{max_steps}, return {state.episode_return:+.3f}, {status} ---")
    if grade is not None:
        lines.append(f"gold {problem.gold}; parsed {grade.parsed}; correct {grade.correct}")
    for i, c in enumerate(candidates):
        lines.append(f"  [{i}] {c.label:5s} p={c.prior:.2f} {textwrap.shorten(c.text, 100) or '<end>'}")
    return "\n".join(lines) + "\n"
