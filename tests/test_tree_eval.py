"""Evaluation search never sees the answer: blind terminal values, lockstep batches, generated-token budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.alphazero.evaluate import evaluate
from agents.alphazero.tree_eval import AnswerAgreement, BlindSearch, head_is_trained
from agents.mcts import MCTS, EnvSearchModel
from agents.policy import constant_value
from agents.student.value import LMValueFunction, ValueHead
from azgym.env import EnvState, ReasoningEnv
from azgym.lm import HFBackend
from azgym.tasks import Problem, arithmetic
from helpers import ScriptedLM, tiny_llama

PROBLEMS = arithmetic.load_problems("add2:4", "test")
ROOTS = {"puct": dict(temperature=0.0, dirichlet_fraction=0.0), "gumbel": dict(root="gumbel")}


@pytest.fixture(scope="module")
def digit_lm(tokenizer):
    """The tiny seeded Llama with its output biased towards digits, so its responses hold answers a grader reads
    (a plain random model never writes a number, and every grade would be wrong whatever the gold answer)."""
    model = tiny_llama(len(tokenizer))
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[[tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]] = 6.0
    model.lm_head = head
    return HFBackend(model, tokenizer, name="tiny-digits")


def make_env(lm, problems):
    return ReasoningEnv(problems, model=lm, task="arithmetic", chunk_tokens=3, max_steps=2, max_tokens=6,
                        answer="flexible", rewards="outcome", prompt="bare")  # fmt: skip


def tree_eval(lm, problems, token_budget=0, **settings):
    env = make_env(lm, problems)
    search = BlindSearch(MCTS(num_simulations=4, **settings), LMValueFunction(lm), token_budget=token_budget)
    return evaluate(lm, problems, arithmetic, mode="tree", env=env, agent=search, progress=False, answer="flexible",
                    prompt="bare", batch_size=4), env  # fmt: skip


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_same_problems_with_other_gold_answers_give_identical_responses(digit_lm, root):
    first, _ = tree_eval(digit_lm, PROBLEMS, **ROOTS[root])
    parsed = [r["parsed"] for r in first["records"]]
    assert sum(a is not None for a in parsed) >= 3  # the responses hold answers, so grades depend on the gold
    # the new gold answers are the answers given: only the grading of the final responses may notice
    swapped = [replace(p, gold=a if a not in (None, p.gold) else str(int(p.gold) + 1))
               for p, a in zip(PROBLEMS, parsed, strict=True)]  # fmt: skip
    second, _ = tree_eval(digit_lm, swapped, **ROOTS[root])
    assert [r["response"] for r in second["records"]] == [r["response"] for r in first["records"]]
    assert [r["tokens"] for r in second["records"]] == [r["tokens"] for r in first["records"]]
    assert second["accuracy"] > first["accuracy"]


def test_a_sighted_search_would_notice_the_gold_answer_and_the_blind_one_does_not(digit_lm):
    """The control for the test above: the self-play search (graded terminals) changes with the gold answers
    on the same trees; the blind search's terminal rewards, visits and values stay the same."""

    def search(problems, blind):
        env = make_env(digit_lm, problems)
        roots = [env.initial_state(i, 7 + i) for i in range(len(problems))]
        terminal = AnswerAgreement(arithmetic, strict=False) if blind else None
        model = EnvSearchModel(env, constant_value(0.0), terminal_value_fn=terminal)
        return MCTS(num_simulations=12, dirichlet_fraction=0.0).search(model, roots, np.random.default_rng(0))

    first = search(PROBLEMS, blind=False)
    tree = first.tree
    gold = []  # per problem: the answer of a finished response the sighted search reached, as the new gold answer
    for b, problem in enumerate(PROBLEMS):
        ended = np.flatnonzero(tree.node_terminal[b, : tree.num_nodes[b]])
        answers = [arithmetic.extract_answer(digit_lm.decode(first.states[b, n].response_ids), strict=False)
                   for n in ended]  # fmt: skip
        gold.append(next((a for a in answers if a not in (None, problem.gold)), problem.gold))
    assert sum(g != p.gold for g, p in zip(gold, PROBLEMS, strict=True)) >= 2
    swapped = [replace(p, gold=g) for p, g in zip(PROBLEMS, gold, strict=True)]
    assert not np.array_equal(search(swapped, blind=False).tree.children_reward, tree.children_reward)
    blind, blind_swapped = search(PROBLEMS, blind=True), search(swapped, blind=True)
    for name in ("children_reward", "node_visits", "node_value_sum", "children_index"):
        np.testing.assert_array_equal(getattr(blind.tree, name), getattr(blind_swapped.tree, name), err_msg=name)
    assert (blind.tree.node_terminal.sum(axis=1) > 0).all()  # the blind search did reach and value finished responses


def test_answer_agreement_values_in_closed_form():
    lm = ScriptedLM({})
    env = ReasoningEnv([Problem("p0", "What is 2 + 3?", "5")], model=lm, num_right=1, num_wrong=1)
    agreement = AnswerAgreement(arithmetic, strict=False)

    def state(text, seed=0):
        return EnvState(problem_index=0, response_ids=tuple(lm.encode(text)), depth=1, seed=seed, terminated=True)

    values = agreement(env, [state("#### 5"), state("so 5"), state("#### 6"), state("no idea")])
    np.testing.assert_allclose(values, [-1 + 2 * 2 / 5, -1 + 2 * 2 / 5, -1 + 2 * 1 / 5, -1.0])
    again = agreement(env, [state("#### 5")])  # a response reached again adds no vote
    np.testing.assert_allclose(again, [-1 + 2 * 2 / 5])
    alone = agreement(env, [state("#### 6", seed=1)])  # another episode: a lone answer is neutral
    np.testing.assert_allclose(alone, [0.0])


def test_the_search_is_batched_and_counts_every_generated_token(digit_lm, monkeypatch):
    calls = []
    original = MCTS.search
    monkeypatch.setattr(MCTS, "search", lambda self, model, roots, rng, **kw: calls.append(len(roots))
                        or original(self, model, roots, rng, **kw))  # fmt: skip
    result, env = tree_eval(digit_lm, PROBLEMS, **ROOTS["puct"])
    assert calls[0] == 4 and len(calls) <= 2  # the four problems in lockstep, one search per move
    assert sum(r["tokens"] for r in result["records"]) == sum(env.proposer.generated_tokens.values()) > 0
    assert result["tokens_per_problem"] > 6  # a search generates far more than the 6-token response it keeps


def test_past_the_token_budget_the_student_finishes_greedily(digit_lm, monkeypatch):
    finishes = []
    original = digit_lm.generate

    def generate(prompts, **kwargs):
        if kwargs.get("temperature") == 0.0:
            finishes.append(len(prompts))
        return original(prompts, **kwargs)

    monkeypatch.setattr(digit_lm, "generate", generate)
    unlimited, _ = tree_eval(digit_lm, PROBLEMS, **ROOTS["puct"])
    assert finishes == []
    budget, env = tree_eval(digit_lm, PROBLEMS, token_budget=1, **ROOTS["puct"])
    assert finishes == [4]  # one move searched, then all four finished in one batched greedy call
    # the greedy finish's tokens count too
    assert sum(r["tokens"] for r in budget["records"]) > sum(env.proposer.generated_tokens.values())
    assert [r["response"] for r in budget["records"]] != [r["response"] for r in unlimited["records"]]
    with pytest.raises(ValueError, match="token_budget"):
        BlindSearch(MCTS(), constant_value(), token_budget=-1)


def test_tree_mode_needs_its_env_and_search(digit_lm):
    with pytest.raises(ValueError, match="tree evaluation needs env"):
        evaluate(digit_lm, PROBLEMS, arithmetic, mode="tree", progress=False)
    env = make_env(digit_lm, PROBLEMS[:2])
    search = BlindSearch(MCTS(num_simulations=2), constant_value())
    with pytest.raises(ValueError, match="does not hold problem"):
        evaluate(digit_lm, PROBLEMS, arithmetic, mode="tree", env=env, agent=search, progress=False)


def test_a_fresh_value_head_is_untrained():
    head = ValueHead(8)
    assert not head_is_trained(head) and not head_is_trained(None)
    with torch.no_grad():
        head.linear.bias.fill_(0.1)
    assert head_is_trained(head)


# -- the scripts: evaluate.py --mode tree and the inference table, on the tiny model ------------------------

TINY_ENV = ["--max-tokens", "8", "--chunk-tokens", "4", "--max-depth", "2", "--simulations", "2", "--no-lora"]


def test_evaluate_script_tree_mode_and_the_inference_table(tiny_dir, tmp_path):
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    tree = subprocess.run([sys.executable, str(scripts / "evaluate.py"), "--model", str(tiny_dir), "--mode", "tree",
                           "--size", "2", "--token-budget", "4", "--search-root", "gumbel", *TINY_ENV,
                           "--out", str(tmp_path / "tree.json")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert tree.returncode == 0, tree.stderr[-3000:]
    assert "search: gumbel, 2 simulations per move, a budget of 4" in tree.stdout
    assert "valued by agreement" in tree.stderr  # a fresh value head is not trusted with finished responses
    assert json.loads((tmp_path / "tree.json").read_text())["base"]["mode"] == "tree"

    out = tmp_path / "bench_inference.json"
    bench = subprocess.run([sys.executable, str(scripts / "bench_inference.py"), "--model", str(tiny_dir),
                            "--size", "2", "--budgets", "8,24", "--budget-simulations", "1,2", *TINY_ENV,
                            "--out", str(out)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows[:2]] == ["greedy", "tree"] and [r["method"] for r in rows[1::2]] == ["tree"] * 2
    assert all(r["method"].startswith("maj@") for r in rows[2::2])
    for tree_row, majority in zip(rows[1::2], rows[2::2], strict=True):  # maj@k matched to the tree's tokens
        k = int(majority["method"][4:])
        assert k == max(1, round(tree_row["tokens_per_problem"] / rows[0]["tokens_per_problem"]))
    assert "tokens/problem" in bench.stdout and "maj@" in bench.stdout and "2 sims, budget 24" in bench.stdout
    bad = subprocess.run([sys.executable, str(scripts / "bench_inference.py"), "--budgets", "64,lots"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "--budgets: must be a comma list of integers" in bad.stderr
    unpaired = subprocess.run([sys.executable, str(scripts / "bench_inference.py"), "--budget-simulations", "4,8"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert unpaired.returncode == 2 and "--budget-simulations: must be 3 integers >= 1" in unpaired.stderr
