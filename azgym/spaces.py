"""The env's spaces: token-id observations padded with ``PAD``, and ``Discrete(K)`` actions where every
action is a move (an empty slot wraps onto a filled one)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.error import InvalidAction

PAD = -1  # fills the unused tail of the token-id observations


def observation_space(vocab_size: int, max_question_tokens: int, max_tokens: int, max_steps: int) -> spaces.Dict:
    high = vocab_size - 1
    return spaces.Dict(
        {
            "question_ids": spaces.Box(PAD, high, (max_question_tokens,), dtype=np.int64),
            "response_ids": spaces.Box(PAD, high, (max_tokens,), dtype=np.int64),
            "depth": spaces.Discrete(max_steps + 1),
        }
    )


def padded(ids: Sequence[int], size: int) -> np.ndarray:
    out = np.full(size, PAD, dtype=np.int64)
    out[: len(ids)] = ids[:size]
    return out


def played_slot(action: int, num_filled: int) -> int:
    """The slot an action plays: itself when filled, else ``action mod num_filled`` (filled slots come first).

    >>> [played_slot(a, 2) for a in range(4)]
    [0, 1, 0, 1]
    """
    return action if action < num_filled else action % num_filled


def as_action(action, n: int) -> int:
    """An action of ``Discrete(n)`` as an int, or ``InvalidAction`` naming the space."""
    try:
        value = int(action)
        valid = value == action and 0 <= value < n
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InvalidAction(f"action must be an integer in [0, {n - 1}] (Discrete({n})), got {action!r}")
    return value
