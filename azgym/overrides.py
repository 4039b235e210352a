"""Integer settings that the seed system's environment variables can override."""

from __future__ import annotations

import os


def int_override(value: int | None, env_name: str, default: int, *, name: str) -> int:
    """An explicit ``value``, else ``$env_name``, else ``default``; the result must be at least 1.

    Used for ``MAX_TREE_DEPTH``, ``MAX_TOKENS`` and ``NUM_MCTS_ITERATIONS``.
    """
    if value is None:
        raw = os.environ.get(env_name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {env_name}={raw!r} must be a positive integer") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value
