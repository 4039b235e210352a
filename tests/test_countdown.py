"""Countdown: the grader (partial credit, strict preset, hostile text), the generators and the env."""

from __future__ import annotations

import builtins
import random
import time
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import azgym  # noqa: F401 - registers the environments
from azgym.prompts import TASK_SYSTEM_PROMPTS
from azgym.tasks import DataError, countdown, get_task
from azgym.tasks.countdown import SelfPlayGenerator, grade, parse_gold, score, solve, strict_reward
from azgym.tasks.countdown_gen import canonical, parse_proposal

NUMBERS, TARGET = [2, 5, 10], 100  # 10 * 5 * 2


def answer(expression: str) -> str:
    return f"Let me think.\n<answer>{expression}</answer>"


@pytest.fixture()
def no_eval(monkeypatch):
    """Any call to eval / exec / compile fails the test: model text is parsed, never executed."""

    def refuse(*args, **kwargs):
        raise AssertionError("model text reached eval/exec/compile")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)


def test_exact_solutions_score_one_in_every_accepted_form(no_eval):
    for response in (answer("10 * 5 * 2"), answer("(10 × 5) × 2"), answer("2 * (5 * 10) = 100"),
                     "10 * 5 * 2 = 100\n#### 2*5*10"):  # fmt: skip
        result = score(response, NUMBERS, TARGET)
        assert (result.correct, result.reward, result.error) == (True, 1.0, None), response
    assert score(answer("(7 - 3) * 25"), [3, 7, 25], 100).expression == "(7 - 3) * 25"
    assert score(answer("10 ÷ 5 × 50"), [5, 10, 50], 100).correct
    assert score(answer("5 * (5 - 1 / 5)"), [1, 5, 5, 5], 24).correct  # exact over fractions


def test_wrong_result_gets_partial_credit_that_decays_with_the_error(no_eval):
    near, far = score(answer("10 * 5 + 2"), NUMBERS, TARGET), score(answer("10 + 5 + 2"), NUMBERS, TARGET)
    assert not near.correct and not far.correct
    assert 1.0 > near.reward > far.reward > 0.1
    assert "equals 52, not 100" in near.error and "equals 17" in far.error
    assert score(answer("10 * 5 * 2 - 1"), [1, 2, 5, 10], 100).reward <= countdown.PARTIAL_CAP  # off by one


def test_number_usage_errors_are_named(no_eval):
    twice = score(answer("10 * 10"), NUMBERS, TARGET)
    assert not twice.correct and 0.1 < twice.reward < 1.0
    assert "uses 10 twice, not once" in twice.error and "does not use 2" in twice.error
    missing = score(answer("10 * 5 * 2"), [1, 2, 5, 10], 100)
    assert not missing.correct and missing.reward < 1.0 and "does not use 1" in missing.error
    alone = score(answer("100"), NUMBERS, TARGET)  # the target alone earns no result credit
    assert alone.reward == pytest.approx(0.3) and "uses 100, which is not one of the numbers" in alone.error


@pytest.mark.parametrize("expression, op", [("10 ** 2 * 5 / 5", "**"), ("10 ^ 2", "^"), ("10 * 5 % 3 * 2", "%"),
                                            ("10 * 5 // 1 * 2", "//"), ("-(2 - 5) * 10", "unary -")])  # fmt: skip
def test_disallowed_operators_are_named_and_never_evaluated(no_eval, expression, op):
    result = score(answer(expression), NUMBERS, TARGET)
    assert not result.correct and 0.1 < result.reward < 0.5
    assert f"uses '{op}'" in result.error and "not evaluated" in result.error


@pytest.mark.parametrize(
    "response, reward, words",
    [
        ("I think it is 10 * 5 * 2", 0.0, "no answer found"),
        (answer(""), 0.1, "empty"),
        (answer("10 * 5 * 2)"), 0.1, "unexpected ')'"),
        (answer("(10 * 5 * 2"), 0.1, "never closed"),
        (answer("10 * 5 *"), 0.1, "ends too early"),
        (answer("2.5 * 40"), 0.1, "whole numbers"),
        (answer("__import__('os').system('echo hi')"), 0.1, "unexpected character '_'"),
        (answer("().__class__.__bases__"), 0.1, "unexpected character '.'"),
        (answer("abs(10) * 5 * 2"), 0.1, "unexpected character 'a'"),
        (answer("1+" * 5000 + "1"), 0.1, "more than the 200 allowed"),
        (answer("(" * 60 + "10" + ")" * 60 + " * 5 * 2"), 0.1, "nested more than 50 levels"),
        (answer("99999999999999 * 2"), 0.1, "larger than 10**12"),
        (answer("9**9**9"), None, "uses '**'"),
        (answer("10 / (5 - 5) + 2"), None, "division by zero"),
        (answer("999999 * 999999 * 10 * 5 * 2"), None, "larger than 10**12"),
    ],
)
def test_hostile_and_malformed_text_is_scored_quickly_with_a_reason(no_eval, response, reward, words):
    start = time.perf_counter()
    result = score(response, NUMBERS, TARGET)
    assert time.perf_counter() - start < 1.0  # microseconds in practice; never a hang
    assert not result.correct and words in result.error
    assert result.reward < 0.5 if reward is None else result.reward == pytest.approx(reward)


def test_strict_preset_is_binary():
    assert strict_reward(answer("10 * 5 * 2"), NUMBERS, TARGET) == 1.0
    assert score(answer("10 * 5 + 2"), NUMBERS, TARGET, strict=True).reward == 0.0
    assert strict_reward(answer("10 * 10"), NUMBERS, TARGET) == 0.0
    assert strict_reward("no answer", NUMBERS, TARGET) == 0.0


def test_grade_reads_the_gold_puzzle_and_fills_the_task_grade():
    g = grade("work\n<answer>(7 - 3) * 25</answer>", "3,7,25 -> 100")
    assert (g.correct, g.format_ok, g.parsed, g.flexible_correct, g.flexible_parsed) == (
        True, True, "(7 - 3) * 25", True, "(7 - 3) * 25")  # fmt: skip
    g = grade("<answer>1 + 2</answer> then <answer>25 * 3 + 7</answer>", "3,7,25 -> 100")  # the last block counts
    assert (g.correct, g.format_ok, g.parsed) == (False, True, "25 * 3 + 7")
    assert grade("no block", "3,7,25 -> 100").format_ok is False
    assert parse_gold(" 3, 7,25->100 ") == ((3, 7, 25), 100)
    for bad in ("3 7 25 100", "3,7,25 -> ", "100", ""):
        with pytest.raises(DataError, match="3,7,25 -> 100"):
            grade("<answer>1</answer>", bad)


def test_answer_marker_ends_a_step_and_the_task_is_registered():
    task = get_task("countdown")
    assert task is countdown and task.NAME == "countdown" and "<answer>" in TASK_SYSTEM_PROMPTS["countdown"]
    assert task.has_answer_marker("<answer>(7 - 3) * 25</answer>") and task.has_answer_marker("(7 - 3) * 25</answer>")
    assert not task.has_answer_marker("First, 7 - 3 = 4.") and not task.has_answer_marker("<answer>(7 - 3)")
    assert task.extract_answer("<answer> 1+2 </answer>", strict=False) == "1+2"
    problem = task.load_problems("3:1", "test")[0]
    assert problem.question.startswith("Using the numbers [") and "each number exactly once" in problem.question


def test_every_generated_problem_is_solvable_and_its_solution_grades_correct():
    problems = countdown.make_problems("3", 500, seed=3) + countdown.make_problems("4", 500, seed=3)
    for problem in problems:
        numbers, target = parse_gold(problem.gold)
        level = countdown.LEVELS["3" if len(numbers) == 3 else "4"]
        assert level.min_target <= target <= level.max_target and max(numbers) <= level.max_number
        assert solve(numbers, target) is not None, problem.gold
        assert grade(problem.solution, problem.gold).correct, (problem.gold, problem.solution)
    assert solve([1, 1, 1], 100) is None and solve([1, 5, 5, 5], 24) is not None  # 5 * (5 - 1/5): fractions


def test_splits_are_disjoint_seeded_and_checked():
    train, test = countdown.load_problems("4:2000", "train"), countdown.load_problems("4", "test")
    assert len(train) == 2000 and len(test) == 1000
    keys = {canonical(*parse_gold(p.gold)) for p in test}
    assert not keys & {canonical(*parse_gold(p.gold)) for p in train}  # not even in another order
    assert countdown.load_problems("4:300", "train") == train[:300]  # same seed, same problems
    assert countdown.make_problems("4", 50, seed=1) != countdown.make_problems("4", 50, seed=2)
    for spec, message in (("5", "unknown countdown level '5'"), ("3:many", "must be an integer")):
        with pytest.raises(DataError, match=message):
            countdown.load_problems(spec, "train")
    with pytest.raises(DataError, match="splits are 'train' and 'test'"):
        countdown.load_problems("3", "dev")


def test_proposals_are_parsed_and_unsolvable_ones_dropped():
    assert parse_proposal("Numbers [3, 7, 25], target 100") == ((3, 7, 25), 100)
    assert parse_proposal("3, 7, 25 -> 100") == ((3, 7, 25), 100)
    assert parse_proposal(countdown.question([2, 9, 4], 17)) == ((2, 9, 4), 17)
    assert parse_proposal("some numbers please") is None
    texts = ["Numbers [3, 7, 5], target 50", "garbage", "1, 1, 1 -> 99", "[4, 9, 2] -> 17", "[3, 7, 5] -> 50"]
    held_out = frozenset({canonical((4, 9, 2), 17)})
    generator = SelfPlayGenerator(lambda n: texts[:n], levels=("3",), proposed_share=1.0, exclude=held_out, seed=0)
    problems = generator.generate(5)
    assert problems[0].gold == "3,7,5 -> 50" and len(problems) == 5
    assert generator.stats == {"proposed": 5, "dropped": 4, "accepted": 1, "unused": 0, "rule_based": 4}
    assert all(solve(*parse_gold(p.gold)) is not None for p in problems)
    assert not {canonical(*parse_gold(p.gold)) for p in problems} & held_out
    assert generator.generate(5)[0].gold != "3,7,5 -> 50"  # never proposed twice


def _scripted_student(seed: int):
    """Solves 3-number puzzles always, 4 numbers with small targets half the time, the rest never."""
    rng = random.Random(seed)

    def solves(problem) -> bool:
        numbers, target = parse_gold(problem.gold)
        return len(numbers) == 3 or (target <= 100 and rng.random() < 0.5)

    return solves


@pytest.mark.parametrize("start", ["3", "4big"])
def test_self_play_difficulty_moves_to_the_level_near_half_success(start):
    generator = SelfPlayGenerator(levels=("3", "4", "4big"), start=start, seed=0)
    solves, history = _scripted_student(0), []
    for _ in range(20):
        batch = generator.generate(16)
        for problem in batch:
            generator.record_result(problem, solves(problem))
        history.append(sum(parse_gold(p.gold)[1] <= 100 and len(parse_gold(p.gold)[0]) == 4 for p in batch))
    assert generator.focus == "4"
    assert generator.success_rate("3") == 1.0 and (generator.success_rate("4big") or 0.0) < 0.3
    assert 0.3 <= generator.success_rate("4") <= 0.7
    assert sum(history[-5:]) / (5 * 16) > 0.6  # most of the late batches are medium problems
    twins = [SelfPlayGenerator(levels=("3", "4", "4big"), start=start, seed=0) for _ in range(2)]
    assert [p.gold for p in twins[0].generate(8)] == [p.gold for p in twins[1].generate(8)]  # seeded


SMALL = dict(chunk_tokens=8, max_steps=4, max_tokens=32)


def test_countdown_env_passes_check_env_and_is_deterministic(tiny_lm):
    problems = countdown.load_problems("3:16", "test")
    env = gym.make("AZLLM-Countdown-v0", data=problems, model=tiny_lm, **SMALL)
    assert env.unwrapped.task is countdown
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    other = gym.make("AZLLM-Countdown-v0", data=problems, model=tiny_lm, **SMALL)
    first, second = env.reset(seed=11)[1], other.reset(seed=11)[1]
    assert first["problem_id"] == second["problem_id"] and first["question"] == second["question"]
    assert first["candidates"] == second["candidates"]
    assert len({env.reset(seed=s)[1]["problem_id"] for s in range(8)}) > 1  # the seed chooses the problem
    default = gym.make("AZLLM-Countdown-v0", split="test", model=tiny_lm, **SMALL)
    assert len(default.unwrapped.problems) == 1000 and default.unwrapped.problems[0].id.startswith("countdown-3-")
