"""The pipeline's record: the seed's three-way table, and one JSON file holding each stage's evaluation.

``{"commit": "...", "problems": 200, "stages": {"base": {"accuracy": .., "format_accuracy": ..,
"wrong_answer": .., "format_failure": .., ...}, "sft": {...}}}``, written by ``evaluate.py --record PATH
--stage NAME``; every stage must be measured on the same number of problems.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAGE_KEYS = (
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "format_accuracy",
    "correct",
    "wrong_answer",
    "format_failure",
    "tokens_per_problem",
)


def three_way_table(rows: dict[str, dict]) -> str:
    """The seed's three-way split per row (correct / wrong answer / format failure: no answer under the rule),
    with the accuracy's 95% Wilson interval, format accuracy (a '#### ' marker) and response tokens per problem.

    >>> r = {"correct": 0.1, "wrong_answer": 0.15, "format_failure": 0.75, "accuracy": 0.1, "accuracy_low": 0.066,
    ...      "accuracy_high": 0.149, "format_accuracy": 0.25, "tokens_per_problem": 180.04}
    >>> print(three_way_table({"base": r}))
                     correct  wrong answer  format failure  accuracy (95% CI)    format  tokens/problem
    base               0.100         0.150           0.750  0.100 (0.066-0.149)   0.250           180.0
    """
    lines = [
        f"{'':15s} {'correct':>8s} {'wrong answer':>13s} {'format failure':>15s}  {'accuracy (95% CI)':20s} "
        f"{'format':>6s}  tokens/problem"
    ]
    for name, r in rows.items():
        interval = f"{r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f})"
        lines.append(
            f"{name:15s} {r['correct']:8.3f} {r['wrong_answer']:13.3f} {r['format_failure']:15.3f}  "
            f"{interval:20s} {r['format_accuracy']:6.3f} {r['tokens_per_problem']:15.1f}"
        )
    return "\n".join(lines)


def check_record(path: str | Path, problems: int) -> None:
    """Raise ValueError (naming the fix) when ``path`` records another number of problems than ``problems``."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable pipeline record ({err}); fix or remove it") from None
    if data.get("problems") not in (None, problems):
        raise ValueError(
            f"{path} records stages on {data['problems']} problems, this evaluation has {problems}; "
            f"use --size {data['problems']} or another --record file"
        )


def record_stage(path: str | Path, stage: str, result: dict[str, Any], *, commit: str, **details: Any) -> dict:
    """Merge ``result``'s figures (an evaluation summary) into the record at ``path`` as ``stage``; returns it.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pipeline.json"
    >>> r = {"num_problems": 2, "accuracy": 0.5, "format_accuracy": 1.0, "wrong_answer": 0.5, "format_failure": 0.0}
    >>> record_stage(path, "base", r, commit="abc")["stages"]["base"]["accuracy"]
    0.5
    >>> sorted(record_stage(path, "sft", r, commit="def", checkpoint="runs/sft")["stages"])
    ['base', 'sft']
    """
    path = Path(path)
    check_record(path, result["num_problems"])
    data = json.loads(path.read_text()) if path.is_file() else {}
    stages = data.get("stages", {})
    stages[stage] = {**{k: result[k] for k in STAGE_KEYS if k in result}, "commit": commit, **details}
    data = {"commit": commit, "problems": result["num_problems"], "stages": stages}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data
