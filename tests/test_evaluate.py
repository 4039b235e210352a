"""The evaluator's modes on a tiny model: every mode grades every problem with the task's grader."""

from __future__ import annotations

import numpy as np
import pytest

from agents.alphazero.evaluate import evaluate
from agents.alphazero.tree_eval import BlindSearch
from agents.mcts import MCTS
from agents.policy import constant_value
from azgym.env import ReasoningEnv
from azgym.tasks import arithmetic

PROBLEMS = arithmetic.load_problems("add2:3", "test")


@pytest.mark.parametrize("mode", ["greedy", "majority", "best_of_n"])
def test_modes_grade_every_problem(tiny_lm, mode):
    scores = []

    def value_fn(prompts):
        scores.append(len(prompts))
        return np.arange(len(prompts), dtype=float)  # prefers the last sample

    result = evaluate(tiny_lm, PROBLEMS, arithmetic, mode=mode, k=3, max_tokens=6, value_fn=value_fn,
                      progress=False)  # fmt: skip
    assert result["num_problems"] == 3 and len(result["records"]) == 3
    assert all(r["gold"] == p.gold for r, p in zip(result["records"], PROBLEMS, strict=True))
    assert result["tokens_per_problem"] <= (6 if mode == "greedy" else 18)
    assert result["accuracy"] + result["wrong_answer"] + result["format_failure"] == pytest.approx(1.0)
    if mode == "best_of_n":
        assert scores == [3, 3, 3]


def test_greedy_is_deterministic(tiny_lm):
    a = evaluate(tiny_lm, PROBLEMS, arithmetic, max_tokens=6, progress=False)
    b = evaluate(tiny_lm, PROBLEMS, arithmetic, max_tokens=6, progress=False)
    assert [r["response"] for r in a["records"]] == [r["response"] for r in b["records"]]


def test_tree_mode_plays_episodes_and_mcts_is_its_old_name(tiny_lm):
    env = ReasoningEnv(PROBLEMS, model=tiny_lm, task="arithmetic", chunk_tokens=3, max_steps=2, max_tokens=6)
    agent = BlindSearch(MCTS(num_simulations=2, temperature=0.0, dirichlet_fraction=0.0), constant_value())
    result = evaluate(tiny_lm, PROBLEMS, arithmetic, mode="mcts", env=env, agent=agent, progress=False)
    assert result["mode"] == "tree" and result["num_problems"] == 3
    assert all(0 < len(tiny_lm.encode(r["response"])) <= 6 and r["tokens"] >= 6 for r in result["records"])


def test_bad_mode_and_missing_inputs(tiny_lm):
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        evaluate(tiny_lm, PROBLEMS, arithmetic, mode="beam")
    with pytest.raises(ValueError, match="value_fn"):
        evaluate(tiny_lm, PROBLEMS, arithmetic, mode="best_of_n")
