"""The Gumbel MuZero root: closed-form bandits, and identity with the plain-Python reference on fixed noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.mcts import MCTS, MCTSAgent
from agents.mcts.gumbel import considered_visits
from agents.mcts.reference import ReferenceGumbelSearch, count_nodes, root_q, root_visits, seq_halving_visits
from agents.mcts.search import SearchConfigError
from agents.mcts.synthetic import HashTreeModel
from azgym.env import ReasoningEnv
from azgym.tasks import Problem
from helpers import Bandit, ScriptedLM, roots

K = 8


def _softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def test_considered_visits_match_mctx_sequential_halving():
    assert considered_visits(4, 16)[4].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for m in range(1, 9):
        for sims in (1, 2, 5, 16, 33):
            assert considered_visits(8, sims)[m].tolist() == seq_halving_visits(m, sims)


def test_one_visit_each_gives_the_closed_form_improved_policy():
    # 4 sims over 4 arms: each arm once; sigma = (50 + 1) * 0.1 * (q - min) / (max - min)
    prior, rewards = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.0, 1.0, 0.5, -1.0])
    result = MCTS(num_simulations=4, root="gumbel", gumbel_scale=0.0).search(Bandit(rewards, prior), roots(1),
                                                                             np.random.default_rng(0))  # fmt: skip
    assert result.visits.tolist() == [[1, 1, 1, 1]]
    sigma = 5.1 * (rewards - rewards.min()) / (rewards.max() - rewards.min())
    expected = _softmax(np.log(prior) + sigma)
    np.testing.assert_allclose(result.improved_policy[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(result.policy, result.improved_policy)
    assert result.action.tolist() == [1]  # no noise: the best of logit + sigma among the most visited


def test_sequential_halving_keeps_the_better_half():
    # 16 sims, 4 arms: 2 visits each, then the two best by g + logit + sigma(q) get 4 more each
    rewards = [0.1, 0.8, -0.4, 0.6]
    result = MCTS(num_simulations=16, root="gumbel", gumbel_scale=0.0).search(Bandit(rewards), roots(1),
                                                                              np.random.default_rng(0))  # fmt: skip
    assert result.visits.tolist() == [[2, 6, 2, 6]]
    assert result.action.tolist() == [1]


def test_gumbel_top_k_samples_m_actions_without_replacement():
    # m = 2 of 8 equal-prior arms: the two arms with the largest noise are the only ones visited
    search = MCTS(num_simulations=10, root="gumbel", max_considered_actions=2)
    for seed in range(5):
        result = search.search(Bandit([0.0] * 8), roots(1), np.random.default_rng(seed))
        top2 = set(np.argsort(-result.gumbel[0])[:2].tolist())
        assert set(np.flatnonzero(result.visits[0]).tolist()) == top2 and result.visits.sum() == 10


def test_strong_prior_many_sims_concentrates_on_the_best_q_action():
    # the prior puts 0.85 on a mediocre arm; after enough simulations sigma(q) outweighs log-prior gaps
    prior = [0.85, 0.05, 0.05, 0.05]
    rewards = [0.2, 0.9, 0.4, -0.6]
    search = MCTS(num_simulations=400, root="gumbel")
    result = search.search(Bandit(rewards, prior), roots(4), np.random.default_rng(0))
    assert (result.improved_policy[:, 1] > 0.99).all()
    assert (result.action == 1).all() and (result.visits[:, 1] == result.visits.max(axis=1)).all()
    # and few simulations leave it close to the prior: policy improvement, not a jump
    few = MCTS(num_simulations=1, root="gumbel", gumbel_scale=0.0).search(Bandit(rewards, prior), roots(1),
                                                                          np.random.default_rng(0))  # fmt: skip
    assert few.visits.tolist() == [[1, 0, 0, 0]] and few.improved_policy[0].argmax() == 0


def test_masked_actions_get_no_visits_and_no_probability():
    model = Bandit([0.5, 1.0, 0.0, 0.2], valid=[True, False, True, True], prior=[0.3, 0.4, 0.2, 0.1])
    result = MCTS(num_simulations=12, root="gumbel").search(model, roots(3), np.random.default_rng(1))
    assert (result.visits[:, 1] == 0).all() and (result.improved_policy[:, 1] == 0).all()
    np.testing.assert_allclose(result.improved_policy.sum(axis=1), 1.0)
    assert (result.action != 1).all()


def test_terminal_root_has_no_action():
    result = MCTS(num_simulations=3, root="gumbel").search(Bandit([1.0, 1.0], root_terminal=True), roots(2),
                                                           np.random.default_rng(0))  # fmt: skip
    assert result.action.tolist() == [-1, -1] and result.improved_policy.sum() == 0


def test_gumbel_settings_are_validated_with_one_line_each():
    with pytest.raises(SearchConfigError, match=r"root: must be one of puct, gumbel, got 'gumble'"):
        MCTS(root="gumble")
    with pytest.raises(SearchConfigError, match=r"max_considered_actions: must be >= 1"):
        MCTS(root="gumbel", max_considered_actions=0)
    with pytest.raises(SearchConfigError, match=r"gumbel_scale: must be >= 0"):
        MCTS(gumbel_scale=-1.0)
    model = HashTreeModel(seed=0)
    first = MCTS(num_simulations=4, root="gumbel").search(model, model.roots(1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="root='puct'"):
        MCTS(num_simulations=4, root="gumbel").search(model, model.roots(1), np.random.default_rng(0),
                                                      reuse=(first.tree, first.states, np.array([1])))  # fmt: skip


def test_seeded_noise_repeats_and_default_stays_puct():
    model = HashTreeModel(seed=3)
    a = MCTS(num_simulations=20, root="gumbel").search(model, model.roots(2), np.random.default_rng(7))
    b = MCTS(num_simulations=20, root="gumbel").search(model, model.roots(2), np.random.default_rng(7))
    np.testing.assert_array_equal(a.visits, b.visits)
    assert a.action.tolist() == b.action.tolist()
    puct = MCTS(num_simulations=20).search(model, model.roots(2), np.random.default_rng(7))
    assert puct.action is None and puct.improved_policy is None and puct.gumbel is None


def test_a_move_is_the_selected_action_under_gumbel_and_a_visit_draw_under_puct():
    bandit = Bandit([0.0, 1.0, 0.5], prior=[0.6, 0.2, 0.2])
    gumbel = MCTS(num_simulations=16, root="gumbel").search(bandit, roots(3), np.random.default_rng(0))
    assert gumbel.choose(np.random.default_rng(1)).tolist() == gumbel.action.tolist()
    puct = MCTS(num_simulations=16, temperature=0.0, dirichlet_fraction=0.0)
    puct = puct.search(bandit, roots(3), np.random.default_rng(0))
    assert puct.choose(np.random.default_rng(1)).tolist() == puct.visits.argmax(axis=1).tolist()


# -- identity with the plain-Python reference -----------------------------------------------------------

CONFIGS = {
    "default": dict(),
    "few-considered": dict(max_considered_actions=3),
    "one-considered": dict(max_considered_actions=1),
    "no-noise": dict(gumbel_scale=0.0),
    "discount-scales": dict(discount=0.9, c_visit=10.0, c_scale=0.5),
    "depth-limit": dict(max_search_depth=2),
    "virtual-loss": dict(leaves_per_round=4, virtual_loss=0.5),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_fixed_noise(name, seed):
    config = CONFIGS[name]
    sims = 7 + 13 * seed  # budgets that do not divide evenly, and one below K
    model = HashTreeModel(seed=seed, invalid_rate=0.25)
    starts = model.roots(5)
    engine = MCTS(num_simulations=sims, root="gumbel", **config).search(model, starts, np.random.default_rng(seed))
    settings = {k: v for k, v in config.items() if k != "gumbel_scale"}
    ref = ReferenceGumbelSearch(gumbel=engine.gumbel, num_simulations=sims, **settings)
    trees = ref.run(model, ref.new_roots(model, starts, np.random.default_rng(seed)))
    policy, action = ref.outcome(trees, K)
    np.testing.assert_array_equal(engine.visits, root_visits(trees, K))
    assert engine.action.tolist() == action.tolist()
    np.testing.assert_allclose(engine.improved_policy, policy, atol=1e-6, rtol=0)
    np.testing.assert_allclose(engine.q_values, root_q(trees, K, config.get("discount", 1.0)), rtol=1e-12)
    assert engine.tree.num_nodes.tolist() == [count_nodes(t) for t in trees]
    # the noise is the search rng's first draw, scaled
    scale = config.get("gumbel_scale", 1.0)
    np.testing.assert_array_equal(engine.gumbel, scale * np.random.default_rng(seed).gumbel(size=(5, K)))


def test_matches_reference_without_jit():
    """The Gumbel kernels run as plain Python under NUMBA_DISABLE_JIT=1 and still agree with the reference."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "matches_reference_on_fixed_noise and (default or virtual) and not without_jit"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert code.returncode == 0, code.stdout[-2000:] + code.stderr[-2000:]
    assert "6 passed" in code.stdout


def test_agent_plays_the_selected_action_to_the_correct_answer():
    script = {"": [("2 + 3 = 6\n", False), ("2 + 3 = 5\n", False)], "2 + 3 = 5\n": [("#### 5\n", False)],
              "2 + 3 = 6\n": [("#### 6\n", False)]}  # fmt: skip
    env = ReasoningEnv([Problem("p0", "What is 2 + 3?", "5")], model=ScriptedLM(script), num_right=1, num_wrong=1,
                       rewards="outcome")  # fmt: skip
    env.reset(seed=0)
    agent = MCTSAgent(num_simulations=8, root="gumbel", seed=0)
    policy = agent.policy(env, [env.get_state()])
    assert policy.actions.tolist() == [1] and policy.probs[0, 1] > 0.99  # the grader's +1 outweighs the prior
    first = agent.act(env)
    assert first == agent.last_result.action[0] == 1
    _, _, terminated, _, _ = env.step(first)
    agent.act(env)
    assert agent.last_result.visits.sum() == 8  # a fresh search: Sequential Halving never reuses the subtree
