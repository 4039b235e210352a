"""Replay buffer on disk, the arithmetic curriculum, evaluation summaries and sample building."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agents.alphazero.evaluate import _majority, _record, summarize
from agents.alphazero.selfplay import to_distill, to_samples
from agents.training.replay import Episode, ReplayBuffer, StepRecord
from azgym.lm.base import Generation
from azgym.tasks import DataError, arithmetic
from azgym.tasks.base import Problem


def episode(problem="p0", iteration=0, correct=True, format_ok=True):
    step = StepRecord(response_len=0, candidates=[[5, 6], [7]], labels=["right", "wrong"], priors=[0.6, 0.4],
                      visits=[3, 1], q_values=[0.5, None], action=0, reward=1.0 if correct else 0.0)  # fmt: skip
    step2 = StepRecord(response_len=2, candidates=[[8]], labels=["right"], priors=[1.0], visits=[4],
                       q_values=[1.0], action=0, reward=0.0)  # fmt: skip
    return Episode(problem_id=problem, question="Q?", prompt_ids=[1, 2], response_ids=[5, 6, 8],
                   episode_return=1.0 if correct else 0.0, correct=correct, format_ok=format_ok, solved=correct,
                   iteration=iteration, weights_version=0, steps=[step, step2])  # fmt: skip


def test_replay_round_trip_and_capacity(tmp_path):
    replay = ReplayBuffer(tmp_path, capacity_iterations=2)
    for it in range(3):
        replay.add(it, [episode(f"p{it}", it), episode(f"p{it}", it, correct=False)])
    assert sorted(replay.shards) == [1, 2] and not (tmp_path / "iter-000000.jsonl").exists()
    again = ReplayBuffer(tmp_path, capacity_iterations=2)
    assert [e.problem_id for e in again.episodes] == ["p1", "p1", "p2", "p2"]
    assert again.episodes[0].steps[0].q_values == [0.5, None]
    groups = again.sample_groups(1, np.random.default_rng(0))
    assert len(groups) == 1 and len(groups[0]) == 2 and groups[0][0].problem_id == groups[0][1].problem_id


def test_corrupt_shard_is_reported_and_skipped(tmp_path, caplog):
    replay = ReplayBuffer(tmp_path)
    replay.add(0, [episode("a", 0)])
    replay.add(1, [episode("b", 1)])
    shard = tmp_path / "iter-000001.jsonl"
    shard.write_text(shard.read_text()[:40])  # truncated mid-record
    with caplog.at_level(logging.WARNING):
        again = ReplayBuffer(tmp_path)
    assert [e.problem_id for e in again.episodes] == ["a"]
    assert "iter-000001.jsonl is unreadable" in caplog.text
    assert (tmp_path / "iter-000001.jsonl.corrupt").exists()  # kept for inspection, not deleted


def test_samples_and_distillation_targets():
    eos = 99
    good, bad = episode(correct=True), episode(correct=False, format_ok=False)
    s_good, s_bad = to_samples([good, bad], eos)
    assert s_good.completion_ids == (5, 6, 8, eos) and s_bad.completion_ids == (5, 6, 8)
    assert s_good.value_positions == (0, 2, 3) and s_good.value_targets == (1.0, 1.0, 1.0)
    assert s_bad.value_targets == (-1.0, -1.0, -1.0) and s_good.group == "0:p0"
    (q_sample,) = to_samples([good], eos, value_target="q")
    assert q_sample.value_targets == (0.5, 1.0, 1.0)
    (distill,) = to_distill([good])  # the one-candidate move carries no policy target
    assert distill.state_ids == (1, 2) and distill.visit_probs == (0.75, 0.25)
    gumbel = episode()
    gumbel.steps[0].policy = [0.9, 0.1]  # a Gumbel root's improved policy: the target, not the visit fractions
    (improved,) = to_distill([gumbel])
    assert improved.visit_probs == (0.9, 0.1)


def test_arithmetic_problems_are_seeded_and_splits_disjoint():
    train, test = arithmetic.load_problems("add2:300", "train"), arithmetic.load_problems("add2:200", "test")
    assert train == arithmetic.load_problems("add2:300", "train")
    assert not {p.question for p in train} & {p.question for p in arithmetic.load_problems("add2", "test")}
    a, b = (int(x) for x in test[0].question.removeprefix("What is ").rstrip("?").split(" + "))
    assert test[0].gold == str(a + b) and 10 <= a <= 99
    assert arithmetic.grade(f"{a} + {b} = {a + b}\n#### {a + b}", test[0].gold).correct
    assert len(arithmetic.load_problems("1", "test")) == 50  # level numbers work; small levels split in half


def test_arithmetic_bad_specs():
    with pytest.raises(DataError, match="unknown arithmetic level 'add9'"):
        arithmetic.load_problems("add9")
    with pytest.raises(DataError, match="must be an integer"):
        arithmetic.load_problems("add2:lots")
    with pytest.raises(DataError, match="fewer than 500 distinct"):
        arithmetic.make_problems("mul1", 500, seed=0)


def test_summary_split_and_majority_vote():
    records = [_record(Problem("a", "?", "7"), text, tokens, arithmetic, "strict")
               for text, tokens in (("#### 7", 10), ("#### 8", 20), ("it is 7", 30), ("no idea", 40))]  # fmt: skip
    s = summarize(records)
    assert (s["accuracy"], s["wrong_answer"], s["format_failure"], s["format_accuracy"]) == (0.25, 0.25, 0.5, 0.5)
    assert (s["strict_accuracy"], s["flexible_accuracy"]) == (0.25, 0.5)
    assert s["tokens_per_problem"] == 25
    # under the last-number rule "it is 7" is correct and only "no idea" has no answer
    s = summarize([dict(r, **_record(Problem("a", "?", "7"), r["response"], r["tokens"], arithmetic, "flexible"))
                   for r in records])  # fmt: skip
    assert (s["accuracy"], s["wrong_answer"], s["format_failure"], s["format_accuracy"]) == (0.5, 0.25, 0.25, 0.5)
    samples = [Generation(t, (), (), "eos") for t in ("#### 3", "#### 4", "so 4\n#### 4.0", "no answer")]
    assert _majority(samples, arithmetic).text == "#### 4"
