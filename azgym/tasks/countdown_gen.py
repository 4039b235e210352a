"""Countdown problems: the gold format, an exhaustive solver, and two generators.

Gold answers encode the puzzle: the numbers, comma-separated, then ``->`` and the target, e.g.
``"3,7,25 -> 100"`` (:func:`format_gold` / :func:`parse_gold`).

The rule-based generator draws numbers for a :class:`Difficulty` (how many numbers, their range,
the largest target), builds a random expression tree over them whose every intermediate is a
positive integer, and keeps its value as the target, so every problem is solvable by construction
(:func:`solve` checks it). :class:`SelfPlayGenerator` mixes problems the student proposes (parsed,
solved and dropped when unsolvable) with rule-based ones, steering the difficulty toward the level
whose recent success rate is nearest the target rate (50%). No model code: the proposer is injected.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from azgym.tasks.base import DataError, Problem


@dataclass(frozen=True)
class Difficulty:
    """A level: ``count`` numbers drawn from 1..``max_number``, a target in ``min_target``..``max_target``."""

    count: int
    max_number: int
    min_target: int
    max_target: int


# easiest first; a data spec names one ("3", "4big:500")
LEVELS: dict[str, Difficulty] = {
    "3": Difficulty(3, 20, 10, 100),
    "3big": Difficulty(3, 99, 100, 1000),
    "4": Difficulty(4, 20, 10, 100),
    "4big": Difficulty(4, 99, 100, 1000),
}

_GOLD = re.compile(r"^\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*->\s*(-?\d+)\s*$")


def format_gold(numbers: Sequence[int], target: int) -> str:
    """The gold string of a puzzle.

    >>> format_gold([3, 7, 25], 100)
    '3,7,25 -> 100'
    """
    return f"{','.join(str(n) for n in numbers)} -> {target}"


def parse_gold(gold: str) -> tuple[tuple[int, ...], int]:
    """The numbers and target of a gold string like ``"3,7,25 -> 100"``; :class:`DataError` otherwise."""
    match = _GOLD.match(gold) if isinstance(gold, str) else None
    if match is None:
        raise DataError(
            f"countdown gold {gold!r} is malformed: write the numbers, comma-separated, then "
            "' -> ' and the target, e.g. '3,7,25 -> 100'"
        )
    return tuple(int(n) for n in match.group(1).split(",")), int(match.group(2))


def question(numbers: Sequence[int], target: int) -> str:
    return (
        f"Using the numbers [{', '.join(str(n) for n in numbers)}], create an equation that equals {target}. "
        "Use + - * / and each number exactly once."
    )


def solve(numbers: Sequence[int], target: int) -> str | None:
    """An expression using every number once with ``+ - * /`` that equals ``target``, or ``None``.

    Exhaustive: combine any two values with any operator until one is left (every order and
    bracketing), exact over Fractions, skipping multisets of values already seen.

    >>> solve([3, 7, 25], 100) is not None, solve([1, 1, 1], 100)
    (True, None)
    """
    goal = Fraction(target)
    seen: set[tuple] = set()

    def search(items: list[tuple[Fraction | int, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == goal else None
        key = tuple(sorted(v for v, _ in items))
        if key in seen:
            return None
        seen.add(key)
        for i, j in itertools.combinations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [
                (a + b, f"({ea} + {eb})"),
                (a * b, f"({ea} * {eb})"),
                (a - b, f"({ea} - {eb})"),
                (b - a, f"({eb} - {ea})"),
            ]
            if b != 0:
                options.append((a // b if a % b == 0 else Fraction(a) / b, f"({ea} / {eb})"))
            if a != 0:
                options.append((b // a if b % a == 0 else Fraction(b) / a, f"({eb} / {ea})"))
            for value, text in options:
                found = search([*rest, (value, text)])
                if found is not None:
                    return found
        return None

    found = search([(n, str(n)) for n in numbers])
    return found[1:-1] if found is not None and len(numbers) > 1 else found


def random_problem(rng: random.Random, level: Difficulty, *, tries: int = 1000) -> tuple[tuple[int, ...], int, str]:
    """Numbers, a target reachable from them and the expression reaching it, drawn from ``rng``."""
    for _ in range(tries):
        numbers = [rng.randint(1, level.max_number) for _ in range(level.count)]
        built = _random_tree(rng, [(n, str(n)) for n in numbers])
        if built is not None and level.min_target <= built[0] <= level.max_target:
            return tuple(numbers), built[0], built[1]
    raise DataError(f"could not draw a reachable target for {level} in {tries} tries")


def _random_tree(rng: random.Random, items: list[tuple[int, str]]) -> tuple[int, str] | None:
    """Combine random pairs with random operators; ``None`` when an intermediate is not a positive integer."""
    items = items[:]
    while len(items) > 1:
        (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        op = rng.choice("+-*/")
        if op in "-/" and a < b:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        if op == "-" and a == b or op == "/" and a % b:
            return None  # a zero, or a fraction: draw again
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        last = not items
        items.append((value, f"{ea} {op} {eb}" if last else f"({ea} {op} {eb})"))
    return items[0]


def canonical(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    """The same puzzle whatever order its numbers are listed in."""
    return tuple(sorted(numbers)), target


def make_problems(level: str, count: int, *, seed: int, exclude: frozenset = frozenset()) -> list[Problem]:
    """``count`` distinct problems of ``level`` from ``seed``, none whose :func:`canonical` key is in ``exclude``."""
    if level not in LEVELS:
        raise DataError(f"unknown countdown level {level!r}; levels: {', '.join(LEVELS)}")
    rng = random.Random(f"countdown-{level}-{seed}")
    found: dict[tuple, tuple[tuple[int, ...], int, str]] = {}
    attempts = 0
    while len(found) < count:
        numbers, target, expression = random_problem(rng, LEVELS[level])
        key = canonical(numbers, target)
        if key not in found and key not in exclude:
            found[key] = (numbers, target, expression)
        attempts += 1
        if attempts > 50 * count + 1000:
            raise DataError(f"countdown level {level!r} has fewer than {count} distinct problems; ask for fewer")
    return [to_problem(f"countdown-{level}-s{seed}-{i:05d}", *row) for i, row in enumerate(found.values())]


def to_problem(problem_id: str, numbers: Sequence[int], target: int, expression: str) -> Problem:
    return Problem(
        id=problem_id,
        question=question(numbers, target),
        gold=format_gold(numbers, target),
        solution=f"<answer>{expression}</answer>",
    )


_TARGET = re.compile(r"(?:target(?:\s+is)?|equals?|makes?|reach(?:es)?|=|->|→)\s*:?\s*(\d+)", re.IGNORECASE)
_LIST = re.compile(r"\[([\d,\s]+)\]")


def parse_proposal(text: str) -> tuple[tuple[int, ...], int] | None:
    """Numbers and target of a problem written as text, or ``None``.

    The target follows "target", "equals", "=" or "->"; the numbers are a bracketed list, else the
    integers before the target. ``"Numbers [3, 7, 25], target 100"``, ``"3, 7, 25 -> 100"`` and
    this task's own question text all read.
    """
    targets = list(_TARGET.finditer(text))
    if not targets:
        return None
    where = targets[-1]
    listed = _LIST.search(text)
    source = listed.group(1) if listed else text[: where.start()]
    numbers = tuple(int(n) for n in re.findall(r"\d+", source))
    return (numbers, int(where.group(1))) if numbers else None


def classify(numbers: Sequence[int], target: int) -> str | None:
    """The easiest level whose bounds hold the puzzle, or ``None``."""
    for name, level in LEVELS.items():
        if (
            len(numbers) == level.count
            and all(1 <= n <= level.max_number for n in numbers)
            and level.min_target <= target <= level.max_target
        ):
            return name
    return None


class SelfPlayGenerator:
    """Problems from the student's own proposals and the rule-based generator, at an adaptive difficulty.

    ``propose(n)`` returns up to ``n`` problem texts (see :func:`parse_proposal`); those that do not
    parse, fit no level, are unsolvable, repeat or are in ``exclude`` (canonical keys, e.g. the test
    set's) are dropped; kept ones fill the batch's slots at their level, rule-based problems the rest
    (``stats`` counts each kind). :meth:`record_result` keeps the
    last ``window`` outcomes per level; the *focus* level is the one whose recent success rate is
    nearest ``target_rate``, stepping to an unexplored neighbour when the focus is too easy (or too
    hard). A batch puts ``1 - explore`` of its problems at the focus and the rest at its neighbours.
    """

    def __init__(
        self,
        propose: Callable[[int], list[str]] | None = None,
        *,
        levels: Sequence[str] = tuple(LEVELS),
        start: str | None = None,
        target_rate: float = 0.5,
        window: int = 32,
        min_results: int = 8,
        explore: float = 0.25,
        proposed_share: float = 0.5,
        exclude: frozenset = frozenset(),
        seed: int = 0,
    ):
        unknown = [name for name in levels if name not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"unknown countdown levels {unknown}; levels: {', '.join(LEVELS)}")
        self.propose, self.levels = propose, list(levels)
        self.target_rate, self.min_results, self.explore = target_rate, min_results, explore
        self.proposed_share, self.exclude = proposed_share, exclude
        self.rng = random.Random(f"countdown-selfplay-{seed}")
        self.results = {name: deque(maxlen=window) for name in self.levels}
        self.focus = start or self.levels[0]
        self.stats = {"proposed": 0, "dropped": 0, "accepted": 0, "unused": 0, "rule_based": 0}
        self._level_of: dict[str, str] = {}
        self._seen: set[tuple] = set()
        self._count = 0

    def success_rate(self, level: str) -> float | None:
        """The recent success rate at ``level``, ``None`` before ``min_results`` outcomes."""
        results = self.results[level]
        return sum(results) / len(results) if len(results) >= self.min_results else None

    def record_result(self, problem: Problem, solved: bool) -> None:
        """Count one attempt at ``problem`` (one of this generator's, or any that fits a level)."""
        level = self._level_of.get(problem.id) or classify(*parse_gold(problem.gold))
        if level in self.results:
            self.results[level].append(bool(solved))
            self.focus = self._choose_focus()

    def _choose_focus(self) -> str:
        rates = {name: self.success_rate(name) for name in self.levels}
        known = [name for name in self.levels if rates[name] is not None]
        if not known:
            return self.focus
        best = min(known, key=lambda name: (abs(rates[name] - self.target_rate), -self.levels.index(name)))
        index, rate = self.levels.index(best), rates[best]
        step = 1 if rate > self.target_rate else -1 if rate < self.target_rate else 0
        neighbour = index + step
        if step and 0 <= neighbour < len(self.levels) and rates[self.levels[neighbour]] is None:
            return self.levels[neighbour]  # explore past a level that is too easy (or too hard)
        return best

    def plan(self, n: int) -> list[str]:
        """The levels of the next ``n`` problems: mostly the focus, some at its neighbours."""
        index = self.levels.index(self.focus)
        neighbours = [self.levels[i] for i in (index - 1, index + 1) if 0 <= i < len(self.levels)]
        return [
            self.rng.choice(neighbours) if neighbours and self.rng.random() < self.explore else self.focus
            for _ in range(n)
        ]

    def generate(self, n: int) -> list[Problem]:
        """``n`` problems at the planned levels, proposed ones first where they fit."""
        wanted = self.plan(n)
        pool: dict[str, list[tuple[tuple[int, ...], int, str]]] = {name: [] for name in self.levels}
        asked = round(n * self.proposed_share) if self.propose else 0
        for text in (self.propose(asked) if asked else [])[:asked]:
            self.stats["proposed"] += 1
            row = self._check(text)
            if row is None or any(canonical(*row[1:3]) == canonical(*other[:2]) for other in pool[row[0]]):
                self.stats["dropped"] += 1
            else:
                pool[row[0]].append(row[1:])
        problems = []
        for level in wanted:
            if pool[level]:
                numbers, target, expression = pool[level].pop(0)
                self._seen.add(canonical(numbers, target))
                self.stats["accepted"] += 1
            else:
                numbers, target, expression = self._rule_based(level)
                self.stats["rule_based"] += 1
            problems.append(self._problem(level, numbers, target, expression))
        self.stats["unused"] += sum(len(rows) for rows in pool.values())  # fit no planned slot
        return problems

    def _check(self, text: str):
        parsed = parse_proposal(text) if isinstance(text, str) else None
        level = classify(*parsed) if parsed else None
        if level not in self.results or canonical(*parsed) in self.exclude or canonical(*parsed) in self._seen:
            return None
        expression = solve(*parsed)
        return None if expression is None else (level, *parsed, expression)

    def _rule_based(self, level: str):
        for _ in range(100):
            numbers, target, expression = random_problem(self.rng, LEVELS[level])
            if canonical(numbers, target) not in self.exclude:
                return numbers, target, expression
        raise DataError(f"every drawn {level!r} problem is excluded; pass a smaller exclude set")

    def _problem(self, level: str, numbers, target: int, expression: str) -> Problem:
        self._count += 1
        problem = to_problem(f"countdown-selfplay-{level}-{self._count:06d}", numbers, target, expression)
        self._level_of[problem.id] = level
        return problem
