"""MCTSAgent and the env bridge: true terminal rewards, batched expansion, full episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.mcts import EnvSearchModel, MCTSAgent
from agents.mcts.tree import ROOT_INDEX
from agents.policy import constant_value
from agents.student.value import LMValueFunction, ValueHead
from azgym.env import ReasoningEnv
from azgym.rewards import LOSS
from azgym.tasks import Problem
from helpers import ScriptedLM

PROBLEM = Problem(id="p0", question="What is 2 + 3?", gold="5")
SCRIPT = {
    "": [("2 + 3 = 5\n", False), ("2 + 3 = 6\n", False)],
    "2 + 3 = 5\n": [("#### 5\n", False), ("#### 6\n", False)],
    "2 + 3 = 6\n": [("#### 6\n", False), ("", True)],
}


def scripted_env():
    lm = ScriptedLM(SCRIPT)
    return ReasoningEnv([PROBLEM], model=lm, num_right=1, num_wrong=1, rewards="outcome"), lm


def test_search_finds_the_correct_path_with_true_terminal_rewards():
    env, _ = scripted_env()
    env.reset(seed=0)
    agent = MCTSAgent(num_simulations=30, temperature=0.0, dirichlet_fraction=0.0, seed=0)
    result = agent.search(env, [env.get_state()])
    assert result.visits[0].argmax() == 0
    node = result.tree.children_index[0, ROOT_INDEX, 0]
    grandchild_q = result.tree.q_values(node)[0]
    assert grandchild_q.tolist() == [1.0, -1.0]  # the grader's reward, not a value estimate


def test_agent_plays_to_the_correct_answer_and_reuses_its_tree():
    env, lm = scripted_env()
    _, info = env.reset(seed=0)
    agent = MCTSAgent(num_simulations=20, temperature=0.0, dirichlet_fraction=0.0, seed=0)
    first = agent.act(env)
    first_visits = agent.last_result.visits.copy()
    _, _, terminated, _, _ = env.step(first)
    second = agent.act(env)
    assert agent.last_result.visits.sum() > 20  # the subtree's visits were kept
    _, reward, terminated, _, info = env.step(second)
    assert (first, second) == (0, 0) and first_visits[0, 0] > first_visits[0, 1]
    assert terminated and reward == 1.0 and info["grade"]["correct"]


def test_batched_search_over_many_states_expands_in_one_call_per_round(tiny_lm, gsm8k_problems):
    env = ReasoningEnv(gsm8k_problems, model=tiny_lm, chunk_tokens=4, max_steps=3, max_tokens=16)
    states = []
    for i in range(4):
        env.reset(seed=i, options={"problem_index": i})
        states.append(env.get_state())
    calls = []
    original = env.proposer._propose_uncached  # the part that calls the model
    env.proposer._propose_uncached = lambda requests: calls.append(len(requests)) or original(requests)
    agent = MCTSAgent(num_simulations=6, seed=0)
    result = agent.search(env, states)
    assert result.visits.shape == (4, 4) and (result.visits.sum(axis=1) == 6).all()
    assert calls[0] == 4 and len(calls) <= 1 + 6  # the roots together, then at most one call per round
    assert all(1 <= n <= 4 for n in calls[1:]) and sum(calls[1:]) > 6
    stats = result.stats()
    assert 0.0 <= stats["tree_time_share"] < 1.0 and stats["num_nodes"] > 1


def test_agent_plays_a_full_episode_on_a_gym_env(tiny_lm, gsm8k_problems):
    env = gym.make("AZLLM-GSM8K-v0", data=gsm8k_problems, model=tiny_lm, chunk_tokens=4, max_steps=3, max_tokens=16)
    _, info = env.reset(seed=0)
    agent = MCTSAgent(num_simulations=4, seed=0)
    done, steps = False, 0
    while not done:
        action = agent.act(env)
        assert info["action_mask"][action] == 1
        _, _, terminated, truncated, info = env.step(action)
        done, steps = terminated or truncated, steps + 1
    assert steps <= 3 and "grade" in info
    with pytest.raises(ValueError, match="reset"):
        agent.act(env)


def test_lm_value_function_reads_the_last_hidden_state(tiny_lm, gsm8k_problems):
    env = ReasoningEnv(gsm8k_problems, model=tiny_lm, chunk_tokens=4)
    env.reset(seed=0)
    state = env.get_state()
    child = env.transition(state, 0).state
    zero = LMValueFunction(tiny_lm)
    np.testing.assert_array_equal(zero(env, [state, child]), [0.0, 0.0])  # a fresh head is neutral
    head = ValueHead(tiny_lm.model.config.hidden_size)
    torch.manual_seed(0)
    torch.nn.init.normal_(head.linear.weight, std=0.05)
    values = LMValueFunction(tiny_lm, head)(env, [state, child, state])
    assert values.shape == (3,) and np.all(np.abs(values) < 0.999) and values[0] != values[1]
    assert values[0] == pytest.approx(values[2], abs=1e-6)  # batch position does not matter
    alone = LMValueFunction(tiny_lm, head)(env, [child])
    assert alone[0] == pytest.approx(values[1], abs=1e-5)


def test_env_model_marks_finished_states_terminal():
    env, _ = scripted_env()
    env.reset(seed=0)
    model = EnvSearchModel(env, constant_value(0.5))
    root = env.get_state()
    step = model.step(np.array([root, root], dtype=object), np.array([0, 1]))
    assert step.expansion.terminal.tolist() == [False, False]
    assert step.expansion.value.tolist() == [0.5, 0.5]
    end = model.step(step.states[:1], np.array([0]))
    assert end.expansion.terminal.tolist() == [True] and end.reward.tolist() == [1.0]
    assert not end.expansion.valid.any()


def test_constant_value_range():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        constant_value(2.0)


# -- one value scale: terminal rewards and the value head agree ---------------------------------------


def test_a_wrong_answer_is_never_worth_more_than_a_state_the_head_expects_to_fail():
    """Action 0 ends at once with a wrong answer; action 1 reaches a live state the value head rates
    -0.8 (likely to fail, not certain). On one scale the search must prefer action 1; with the old
    0/1 reward and +-1 head, the wrong answer (0) looked better than the live state (-0.8)."""
    lm = ScriptedLM({"": [("#### 7\n", False), ("Let me add.\n", False)], "Let me add.\n": [("#### 5\n", False)]})
    env = ReasoningEnv([PROBLEM], model=lm, num_right=1, num_wrong=1, rewards="outcome")
    env.reset(seed=0)
    assert [c.text for c in env.candidates()] == ["#### 7\n", "Let me add.\n"]
    agent = MCTSAgent(constant_value(-0.8), num_simulations=16, temperature=0.0, dirichlet_fraction=0.0,
                      max_search_depth=1, seed=0)  # fmt: skip
    result = agent.search(env, [env.get_state()])
    q_wrong, q_live = result.q_values[0]
    assert q_wrong == LOSS == -1.0 and q_live == pytest.approx(-0.8)
    assert result.visits[0, 1] > result.visits[0, 0] and result.policy[0].tolist() == [0.0, 1.0]
    # the head can never rate a state below a wrong answer: its range ends at the loss outcome
    head = ValueHead(8)
    with torch.no_grad():
        head.linear.bias.fill_(-1e4)
        assert float(head(torch.zeros(1, 8))) >= LOSS


def test_gumbel_self_play_records_the_improved_policy_as_the_distillation_target():
    from agents.alphazero.selfplay import self_play, to_distill

    env, _ = scripted_env()
    agent = MCTSAgent(root="gumbel", num_simulations=4, seed=0, reuse_tree=False)
    episodes, _ = self_play(env, agent, [0], 1, np.random.default_rng(0), iteration=0, weights_version=0,
                            progress=False)  # fmt: skip
    step = episodes[0].steps[0]
    assert step.policy is not None and abs(sum(step.policy) - 1) < 1e-5
    assert step.policy != [v / sum(step.visits) for v in step.visits]  # completed Q, not the visit counts
    assert to_distill(episodes)[0].visit_probs == tuple(step.policy)
    env, _ = scripted_env()
    puct, _ = self_play(env, MCTSAgent(num_simulations=4, seed=0, reuse_tree=False), [0], 1,
                        np.random.default_rng(0), iteration=0, weights_version=0, progress=False)  # fmt: skip
    assert puct[0].steps[0].policy is None  # PUCT: the visit fractions stay the target
