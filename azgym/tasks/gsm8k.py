"""GSM8K: loading problems and grading responses.

Rows have a ``question`` and an ``answer`` whose last line is ``#### <number>`` (the original
format). Sources: a local ``.jsonl`` / ``.parquet`` file, a directory holding ``<split>.jsonl`` or
``<split>.parquet``, or a Hub id (``openai/gsm8k``, config ``main``) loaded through ``datasets``.

Grading is numeric: ``1,000`` == ``1000``, ``$5`` == ``5``, ``5.00`` == ``5``, ``-3`` is negative,
``\\boxed{7}`` counts as a marked answer. Strict parsing reads the ``#### `` marker (or a boxed
answer); flexible parsing falls back to the last number in the text. Both are reported.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from azgym.tasks.base import DataError, Problem

NAME = "gsm8k"
DEFAULT_DATA = "openai/gsm8k"  # the Hub id; any local GSM8K file or folder works too

_NUMBER = r"-?\$?\s?-?\d[\d,]*(?:\.\d+)?|-?\$?\s?-?\.\d+"
_MARKER = re.compile(r"####\s*(" + _NUMBER + r")")
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")
_ANY_NUMBER = re.compile(_NUMBER)
_ANSWER_MARKER = re.compile(r"####\s*(?=\S)|\\boxed\{")


@dataclass(frozen=True)
class Grade:
    """How a response scored against the gold answer.

    ``correct`` and ``parsed`` come from strict parsing (an answer marker); ``format_ok`` says a
    marker was present; the ``flexible_*`` fields come from the last number when no marker was.
    """

    correct: bool
    format_ok: bool
    parsed: str | None
    flexible_correct: bool
    flexible_parsed: str | None


def to_number(text: str) -> Fraction | None:
    """Parse a number written with commas, a dollar sign, spaces or a trailing period.

    >>> to_number("$1,234.50")
    Fraction(2469, 2)
    >>> to_number("5.00") == to_number("5")
    True
    >>> to_number("-$3") == -3
    True
    >>> to_number("seven") is None
    True
    """
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    negative = cleaned.count("-") % 2 == 1
    cleaned = cleaned.replace("-", "")
    try:
        value = Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if negative else value


def extract_answer(text: str, *, strict: bool = True) -> str | None:
    """The answer a response commits to, or ``None`` when it cannot be read.

    Strict: the number after the last ``####`` marker, else inside the last ``\\boxed{}``.
    Flexible (``strict=False``): that, else the last number anywhere in the text.

    >>> extract_answer("3 + 4 = 7\\n#### 7")
    '7'
    >>> extract_answer("so the total is $1,200.")
    >>> extract_answer("so the total is $1,200.", strict=False)
    '1200'
    >>> extract_answer("The answer is \\\\boxed{-5}")
    '-5'
    """
    for pattern in (_MARKER, _BOXED):
        found = pattern.findall(text)
        if found:
            return _canonical(found[-1])
    if strict:
        return None
    found = _ANY_NUMBER.findall(text)
    return _canonical(found[-1]) if found else None


def has_answer_marker(text: str) -> bool:
    """True once a response states a final answer (``#### <number>`` or ``\\boxed{...}``)."""
    return extract_answer(text) is not None


def grade(response: str, gold: str) -> Grade:
    """Grade ``response`` against the ``gold`` number.

    >>> grade("2 + 2 = 4\\n#### 4", "4").correct
    True
    >>> g = grade("I think it is 4", "4")
    >>> (g.correct, g.format_ok, g.flexible_correct)
    (False, False, True)
    """
    gold_value = to_number(gold)
    if gold_value is None:
        raise ValueError(f"gold answer {gold!r} is not a number; GSM8K gold answers are numbers like '72'")
    strict = extract_answer(response)
    flexible = extract_answer(response, strict=False)
    return Grade(
        correct=strict is not None and to_number(strict) == gold_value,
        format_ok=_ANSWER_MARKER.search(response) is not None,
        parsed=strict,
        flexible_correct=flexible is not None and to_number(flexible) == gold_value,
        flexible_parsed=flexible,
    )


def _canonical(raw: str) -> str | None:
    value = to_number(raw)
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), "g") if value.denominator & (value.denominator - 1) == 0 else str(value)


def gold_from_solution(solution: str) -> str | None:
    """The number after ``####`` in a GSM8K reference solution."""
    found = _MARKER.findall(solution)
    return _canonical(found[-1]) if found else None


def load_problems(source: str | Path, split: str = "train") -> list[Problem]:
    """Load GSM8K problems from a local file or directory, or from the Hub.

    Raises :class:`DataError` naming the file and line of a malformed row, or the missing path.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = [path / f"{split}.jsonl", path / f"{split}.parquet"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise DataError(
                f"{path} has no {split}.jsonl or {split}.parquet; point data at a GSM8K file, a folder "
                f"holding <split>.jsonl, or the Hub id {DEFAULT_DATA!r}"
            )
        path = found[0]
    if path.is_file():
        rows = _read_jsonl(path) if path.suffix in (".jsonl", ".json") else _read_parquet(path)
        return [_to_problem(row, split, f"{path}:{where}") for where, row in rows]
    if str(source).startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json", ".parquet"):
        raise DataError(
            f"data path {str(source)!r} does not exist; pass an existing GSM8K .jsonl/.parquet file, a "
            f"folder holding {split}.jsonl, or the Hub id {DEFAULT_DATA!r}"
        )
    return _load_hub(str(source), split)


def _read_jsonl(path: Path):
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:line {number} is not valid JSON ({err.msg}); fix or remove that line") from err


def _read_parquet(path: Path):
    import datasets

    try:
        table = datasets.Dataset.from_parquet(str(path))
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path} could not be read as Parquet: {err}") from err
    for index, row in enumerate(table):
        yield f"row {index}", row


def _load_hub(hub_id: str, split: str) -> list[Problem]:
    import datasets

    try:
        table = datasets.load_dataset(hub_id, "main" if hub_id == DEFAULT_DATA else None, split=split)
    except Exception as err:  # noqa: BLE001 - network, missing dataset and missing split all differ
        raise DataError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {err}. Without Hub "
            f"access, download GSM8K's {split}.jsonl and pass its path (or its folder) as data."
        ) from err
    return [_to_problem(row, split, f"{hub_id}[{split}] row {i}") for i, row in enumerate(table)]


def _to_problem(row: object, split: str, where: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with 'question' and 'answer', got {type(row).__name__}")
    question, solution = row.get("question"), row.get("answer")
    missing = [k for k, v in (("question", question), ("answer", solution)) if not isinstance(v, str) or not v.strip()]
    if missing:
        raise DataError(
            f"{where}: field {' and '.join(map(repr, missing))} missing or not a non-empty string; "
            f"each GSM8K row needs a 'question' and an 'answer' ending in '#### <number>'"
        )
    gold = gold_from_solution(solution)
    if gold is None:
        raise DataError(f"{where}: the answer does not end with '#### <number>' (got ...{solution[-40:]!r})")
    digest = hashlib.sha1(question.encode("utf-8")).hexdigest()[:10]
    return Problem(id=f"{NAME}-{split}-{digest}", question=question, gold=gold, solution=solution)
