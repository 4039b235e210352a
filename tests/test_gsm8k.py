"""GSM8K grading on hand-written cases, and loading with clear errors for bad data."""

from __future__ import annotations

import json

import pytest

from azgym.tasks import DataError, gsm8k
from azgym.tasks.gsm8k import extract_answer, grade

# response, gold, correct (strict), format_ok, parsed, flexible_correct
CASES = [
    ("3 + 4 = 7\n#### 7", "7", True, True, "7", True),
    ("#### 1,000", "1000", True, True, "1000", True),
    ("#### $18", "18", True, True, "18", True),
    ("#### 18.", "18", True, True, "18", True),
    ("#### 5.00", "5", True, True, "5", True),
    ("#### -3", "-3", True, True, "-3", True),
    ("#### $-3", "-3", True, True, "-3", True),
    ("#### 0.5", "0.5", True, True, "0.5", True),
    ("the answer is \\boxed{42}", "42", True, True, "42", True),
    ("#### 7\nwait, #### 8", "8", True, True, "8", True),  # the last marker counts
    ("#### 7", "8", False, True, "7", False),
    ("so she makes $18 a day.", "18", False, False, None, True),  # no marker: flexible only
    ("it costs 1,250 dollars", "1250", False, False, None, True),
    ("no numbers here", "4", False, False, None, False),
    ("#### seven", "7", False, True, None, False),  # a marker with no number
    ("", "1", False, False, None, False),
    ("12 apples, so 12 - 5 = 7\n#### 7", "7", True, True, "7", True),
    ("#### 7", "7.0", True, True, "7", True),
]


@pytest.mark.parametrize(("response", "gold", "correct", "format_ok", "parsed", "flexible"), CASES)
def test_grade_table(response, gold, correct, format_ok, parsed, flexible):
    g = grade(response, gold)
    assert (g.correct, g.format_ok, g.parsed, g.flexible_correct) == (correct, format_ok, parsed, flexible)


def test_extract_answer_strict_and_flexible():
    assert extract_answer("total 12 then 15") is None
    assert extract_answer("total 12 then 15", strict=False) == "15"
    assert extract_answer("#### 1,234,567") == "1234567"
    assert extract_answer("#### 2.50") == "2.5"


def test_gold_must_be_a_number():
    with pytest.raises(ValueError, match="not a number"):
        grade("#### 3", "three")


def test_loads_dev_subset_with_stable_unique_ids(gsm8k_dir):
    problems = gsm8k.load_problems(gsm8k_dir, "test")
    assert len(problems) == 1019
    assert len({p.id for p in problems}) == len(problems)
    again = gsm8k.load_problems(gsm8k_dir / "test.jsonl", "test")
    assert [p.id for p in again[:5]] == [p.id for p in problems[:5]]
    assert problems[0].gold == "18" and problems[0].id.startswith("gsm8k-test-")
    # the reference solutions grade as correct against their own gold answers
    assert all(grade(p.solution, p.gold).correct for p in problems)


def test_loads_parquet(tmp_path, gsm8k_dir):
    import datasets

    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:3]]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "test.parquet"))
    problems = gsm8k.load_problems(tmp_path, "test")
    assert [p.question for p in problems] == [r["question"] for r in rows]


def write(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", r"line 2 is not valid JSON"),
        (json.dumps({"question": "Q?"}), r"line 2: field 'answer' missing"),
        (json.dumps({"question": "", "answer": "#### 1"}), r"line 2: field 'question' missing"),
        (
            json.dumps({"question": "Q?", "answer": "no marker"}),
            r"line 2: the answer does not end with '#### <number>'",
        ),
        (json.dumps(["a", "list"]), r"line 2: expected a JSON object"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path, [GOOD, bad_line])
    with pytest.raises(DataError, match=message) as err:
        gsm8k.load_problems(path)
    assert str(path) in str(err.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        gsm8k.load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="has no train.jsonl"):
        gsm8k.load_problems(tmp_path)
