"""Countdown: reach a target from 3-4 numbers with ``+ - * /``, using each number exactly once.

The response's answer is the last ``<answer>...</answer>`` block (TinyZero's format); a final
``#### ...`` line is accepted too, and a trailing ``= <number>`` after the expression is ignored (the
expression's own value is what counts). Expressions are parsed by :mod:`azgym.tasks.countdown_expr`,
never executed. Gold answers encode the puzzle: ``"3,7,25 -> 100"`` (numbers, then the target).

:func:`score` gives the seed system's partial credit (TinyZero with A*PO):

- 0.1 format: an answer block was found;
- 0.1 valid expression: it parses (only numbers, operators and parentheses, within the limits);
- 0.1 legal operators: only binary ``+ - * /`` (``**``, ``^``, ``%``, ``//``, a unary sign are not);
- 0.2 number usage, proportional: ``0.2 * matched / max(len(numbers), len(used))``, where
  ``matched`` counts the given numbers used (as a multiset), so a missing number and a number used
  twice both cost a share;
- 0.6 result: ``0.6 * usage * exp(-K * |value - target| / max(1, |target|))`` with ``K = 5`` (0.6
  when exact; about 0.36 when 10% off), where ``usage`` is the number-usage fraction above, so the
  target written alone (``<answer>100</answer>``) earns no result credit; nothing when the expression
  is not evaluated (illegal operator, division by zero, a value beyond 10**12).

An exact solution (every number exactly once, only ``+ - * /``, the value within 1e-6 of the target)
scores 1.0; anything short of it is capped at :data:`PARTIAL_CAP` (0.9) so it always scores less.
``score(..., strict=True)`` (or :func:`strict_reward`) is the binary preset: 1.0 or 0.0.

``data`` names a level and optionally a count: ``"3"`` (3 numbers in 1..20, targets 10..100),
``"4"``, ``"3big"`` / ``"4big"`` (numbers up to 99, targets 100..1000), ``"4:500"``. Problems are
generated from a seed and the train split never holds a test puzzle (in any number order).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from azgym.tasks.base import DataError, Problem
from azgym.tasks.countdown_expr import ExpressionError, parse
from azgym.tasks.countdown_gen import (
    LEVELS,
    Difficulty,
    SelfPlayGenerator,
    format_gold,
    make_problems,
    parse_gold,
    parse_proposal,
    question,
    random_problem,
    solve,
)
from azgym.tasks.gsm8k import Grade

__all__ = [
    "LEVELS",
    "CountdownScore",
    "Difficulty",
    "Grade",
    "SelfPlayGenerator",
    "extract_answer",
    "format_gold",
    "grade",
    "has_answer_marker",
    "load_problems",
    "make_problems",
    "parse_gold",
    "parse_proposal",
    "partial_credit",
    "question",
    "random_problem",
    "score",
    "solve",
    "strict_reward",
]

NAME = "countdown"
DEFAULT_DATA = "3"  # three numbers in 1..20, targets 10..100
DEFAULT_COUNT = {"train": 5000, "test": 1000}
_SPLIT_SEED = {"train": 0, "test": 1}

FORMAT, VALID, OPERATORS, NUMBERS, RESULT = 0.1, 0.1, 0.1, 0.2, 0.6
DECAY = 5.0  # K in the result credit's exp(-K * relative error)
PARTIAL_CAP = 0.9
TOLERANCE = Fraction(1, 10**6)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.MULTILINE)
_TRAILING_EQUALS = re.compile(r"=\s*-?\d+(?:\.\d+)?\s*\.?\s*$")


@dataclass(frozen=True)
class CountdownScore:
    """How an answer scored: ``correct`` (exact solution), ``reward`` in [0, 1], the ``expression``
    found (``None`` without an answer block) and ``error``, why it fell short, in words."""

    correct: bool
    reward: float
    expression: str | None
    error: str | None


def extract_answer(text: str, *, strict: bool = True) -> str | None:
    """The expression of the last answer block (``<answer>...</answer>`` or a ``#### ...`` line).

    ``strict`` is accepted for the Task protocol; Countdown reads answers one way only.

    >>> extract_answer("think...\\n<answer>(25 - 7) * 3</answer>")
    '(25 - 7) * 3'
    >>> extract_answer("no answer here") is None
    True
    """
    found = [(m.end(), m.group(1)) for pattern in (_ANSWER, _MARKER) for m in pattern.finditer(text)]
    return max(found)[1].strip() if found else None


def has_answer_marker(text: str) -> bool:
    """True once text states a final answer: an answer block, a ``#### `` line, or a closing
    ``</answer>`` (a step that ends a block opened in an earlier step)."""
    return extract_answer(text) is not None or "</answer>" in text.lower()


def score(response: str, numbers: Sequence[int], target: int, *, strict: bool = False) -> CountdownScore:
    """Score ``response`` on the puzzle ``numbers`` -> ``target`` (see the module docstring).

    >>> score("<answer>(25 - 7) * 3 + 46</answer>", [3, 7, 25, 46], 100)
    CountdownScore(correct=True, reward=1.0, expression='(25 - 7) * 3 + 46', error=None)
    >>> score("<answer>25 * 3 + 7</answer>", [3, 7, 25], 100).reward < 1.0
    True
    """
    answer = extract_answer(response)
    if answer is None:
        return CountdownScore(False, 0.0, None, "no answer found: write the equation as <answer>expression</answer>")
    reward, errors = FORMAT, []
    try:
        parsed = parse(_TRAILING_EQUALS.sub("", answer).strip())
    except ExpressionError as err:
        return _partial(strict, reward, answer, [f"invalid expression: {err}"])
    reward += VALID
    if parsed.illegal:
        shown = ", ".join(f"'{op}'" for op in dict.fromkeys(parsed.illegal))
        errors.append(f"uses {shown}: only + - * / between numbers are allowed, so it was not evaluated")
    else:
        reward += OPERATORS
    numbers_ok, usage_credit, usage_errors = _number_usage(parsed.numbers, numbers)
    reward += NUMBERS * usage_credit
    errors += usage_errors
    if parsed.value is not None:
        distance = abs(parsed.value - target)
        reward += RESULT * usage_credit * math.exp(-DECAY * float(distance / max(1, abs(target))))
        if distance > TOLERANCE:
            errors.append(f"the expression equals {_show(parsed.value)}, not {target}")
    elif parsed.error:
        errors.append(f"could not be evaluated: {parsed.error}")
    if not errors and numbers_ok:
        return CountdownScore(True, 1.0, answer, None)
    return _partial(strict, reward, answer, errors)


def strict_reward(response: str, numbers: Sequence[int], target: int) -> float:
    """The binary preset: 1.0 for an exact solution, else 0.0."""
    return score(response, numbers, target, strict=True).reward


def grade(response: str, gold: str) -> Grade:
    """Grade ``response`` against a gold puzzle like ``"3,7,25 -> 100"`` (strict: an exact solution).

    >>> grade("<answer>(7 - 3) * 25</answer>", "3,7,25 -> 100").correct
    True
    """
    numbers, target = parse_gold(gold)
    result = score(response, numbers, target)
    return Grade(
        correct=result.correct,
        format_ok=result.expression is not None,
        parsed=result.expression,
        flexible_correct=result.correct,
        flexible_parsed=result.expression,
    )


def partial_credit(response: str, gold: str) -> float:
    """The :func:`score` reward of ``response`` on a gold puzzle, in [0, 1] (1.0 for an exact solution):
    what the ``partial`` reward preset pays.

    >>> partial_credit("<answer>(7 - 3) * 25</answer>", "3,7,25 -> 100"), partial_credit("no", "3,7,25 -> 100")
    (1.0, 0.0)
    """
    numbers, target = parse_gold(gold)
    return score(response, numbers, target).reward


def load_problems(source: str | Path = DEFAULT_DATA, split: str = "train") -> list[Problem]:
    """Problems for ``split`` from a spec like ``"3"`` or ``"4:500"`` (see the module docstring)."""
    if split not in _SPLIT_SEED:
        raise DataError(f"countdown splits are 'train' and 'test', got {split!r}")
    level, _, count_text = str(source).partition(":")
    if level not in LEVELS:
        raise DataError(f"unknown countdown level {level!r}; levels: {', '.join(LEVELS)} (optionally ':<count>')")
    try:
        count = int(count_text) if count_text else DEFAULT_COUNT[split]
    except ValueError:
        raise DataError(f"countdown data {source!r}: the count after ':' must be an integer") from None
    if split == "train":  # no test puzzle is ever trained on
        test = make_problems(level, DEFAULT_COUNT["test"], seed=_SPLIT_SEED["test"])
        held_out = frozenset(_key(p) for p in test)
        return make_problems(level, count, seed=_SPLIT_SEED["train"], exclude=held_out)
    return make_problems(level, count, seed=_SPLIT_SEED["test"])


def _key(problem: Problem) -> tuple[tuple[int, ...], int]:
    numbers, target = parse_gold(problem.gold)
    return tuple(sorted(numbers)), target


def _number_usage(used: Sequence[int], given: Sequence[int]) -> tuple[bool, float, list[str]]:
    used_count, given_count = Counter(used), Counter(given)
    matched = sum((used_count & given_count).values())
    errors = []
    for n in sorted(given_count):
        if used_count[n] < given_count[n]:
            errors.append(
                f"does not use {n}"
                if not used_count[n]
                else f"uses {n} {_times(used_count[n])}, not {_times(given_count[n])}"
            )
    for n in sorted(used_count):
        if n not in given_count:
            errors.append(f"uses {n}, which is not one of the numbers")
        elif used_count[n] > given_count[n]:
            errors.append(f"uses {n} {_times(used_count[n])}, not {_times(given_count[n])}")
    return not errors, matched / max(len(given), len(used), 1), errors


def _partial(strict: bool, reward: float, answer: str, errors: list[str]) -> CountdownScore:
    return CountdownScore(False, 0.0 if strict else round(min(reward, PARTIAL_CAP), 6), answer, "; ".join(errors))


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value} (about {float(value):.4g})"


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")
