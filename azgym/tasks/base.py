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
