"""Arithmetic: procedurally generated problems from 1-digit addition to short multi-step word problems.

A curriculum where learning shows on a CPU (SmolLM2-135M zero-shot: ~54% on 1-digit addition,
~8% on 2-digit addition, ~27% on 1-digit multiplication). Problems are generated from a seed, so
they are the same on every machine; the train and test splits use different seeds and never share
a question. Grading is GSM8K's: a final ``#### <number>`` line, compared numerically.

``data`` names a level or a level and a count: ``"add2"``, ``"add2:5000"``; or one of the level
numbers ``"1"`` .. ``"5"``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from azgym.tasks.base import DataError, Problem
from azgym.tasks.gsm8k import Grade, extract_answer, grade, has_answer_marker

__all__ = ["Grade", "extract_answer", "grade", "has_answer_marker", "load_problems", "make_problems"]

NAME = "arithmetic"
DEFAULT_DATA = "add2"  # the default ``data``: 2-digit addition, where the base model is weakest but not zero
DEFAULT_COUNT = {"train": 5000, "test": 1000}
_SPLIT_SEED = {"train": 0, "test": 1}


def _add1(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} + {b}?", a + b


def _add2(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b


def _mul1(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} * {b}?", a * b


def _sub2(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {max(a, b)} - {min(a, b)}?", abs(a - b)


def _word(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(["Ana", "Ben", "Chen", "Dara", "Eli", "Farah"])
    item = rng.choice(["apples", "stickers", "marbles", "books", "coins"])
    start, bought, each = rng.randint(2, 20), rng.randint(2, 6), rng.randint(2, 5)
    given = rng.randint(1, start)
    question = (
        f"{name} has {start} {item}. {name} buys {bought} bags with {each} {item} in each bag, "
        f"then gives away {given} {item}. How many {item} does {name} have now?"
    )
    return question, start + bought * each - given


LEVELS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "add1": _add1,
    "add2": _add2,
    "mul1": _mul1,
    "sub2": _sub2,
    "word": _word,
}
_BY_NUMBER = {str(i + 1): name for i, name in enumerate(LEVELS)}
_DISTINCT = {"add1": 100, "mul1": 64, "sub2": 4095, "add2": 8100}  # questions a level can produce


def default_count(level: str, split: str) -> int:
    """Split sizes: 5000 train / 1000 test, or half and half for the small levels."""
    size = _DISTINCT.get(level, 10**9)
    test = min(DEFAULT_COUNT["test"], size // 2)
    return test if split == "test" else min(DEFAULT_COUNT["train"], size - test)


def make_problems(level: str, count: int, *, seed: int, exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """``count`` distinct problems of ``level`` from ``seed`` (skipping questions in ``exclude``)."""
    if level not in LEVELS:
        raise DataError(f"unknown arithmetic level {level!r}; levels: {', '.join(LEVELS)} (or 1..{len(LEVELS)})")
    rng = random.Random(f"{level}-{seed}")
    seen: dict[str, int] = {}
    attempts = 0
    while len(seen) < count:
        question, answer = LEVELS[level](rng)
        attempts += 1
        if question not in seen and question not in exclude:
            seen[question] = answer
        if attempts > 50 * count + 1000:
            raise DataError(f"level {level!r} has fewer than {count} distinct problems; ask for fewer")
    return [
        Problem(id=f"{level}-s{seed}-{i:05d}", question=q, gold=str(a), solution=f"#### {a}")
        for i, (q, a) in enumerate(seen.items())
    ]


def load_problems(source: str = DEFAULT_DATA, split: str = "train") -> list[Problem]:
    """Problems for ``split`` from a spec like ``"add2"`` or ``"add2:500"`` (see the module docstring)."""
    if split not in _SPLIT_SEED:
        raise DataError(f"arithmetic splits are 'train' and 'test', got {split!r}")
    level, _, count_text = str(source).partition(":")
    level = _BY_NUMBER.get(level, level)
    if level not in LEVELS:
        raise DataError(f"unknown arithmetic level {level!r}; levels: {', '.join(LEVELS)} (or 1..{len(LEVELS)})")
    try:
        count = int(count_text) if count_text else default_count(level, split)
    except ValueError:
        raise DataError(f"arithmetic data {source!r}: the count after ':' must be an integer") from None
    if split == "train":  # the test questions are never trained on
        test = make_problems(level, default_count(level, "test"), seed=_SPLIT_SEED["test"])
        held_out = frozenset(p.question for p in test)
        return make_problems(level, count, seed=_SPLIT_SEED["train"], exclude=held_out)
    return make_problems(level, count, seed=_SPLIT_SEED["test"])
