"""The batched numba search: closed-form cases, and identity with the plain-Python reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.mcts import MCTS, kernels
from agents.mcts.kernels import visit_policy
from agents.mcts.reference import ReferenceSearch, count_nodes, max_depth, reroot, root_q, root_visits
from agents.mcts.synthetic import HashTreeModel
from agents.mcts.tree import ROOT_INDEX, new_tree
from helpers import Bandit, roots

K = 8


def rng():
    return np.random.default_rng(0)


# -- closed-form cases ------------------------------------------------------------------------------


def test_bandit_greedy_search_tries_each_arm_once_then_exploits():
    # c = 0 and an optimistic first-play value: every arm is tried once, then the best takes the rest
    search = MCTS(num_simulations=10, c_puct=0.0, pb_c_base=None, fpu_value=2.0, dirichlet_fraction=0, temperature=0)
    result = search.search(Bandit([0.2, 0.9, 0.5]), roots(1), rng())
    assert result.visits.tolist() == [[1, 8, 1]]
    np.testing.assert_allclose(result.q_values, [[0.2, 0.9, 0.5]])
    assert result.policy.tolist() == [[0.0, 1.0, 0.0]]
    assert result.tree.num_nodes.tolist() == [4]  # root + one node per arm, revisits create nothing


def test_bandit_visits_follow_the_prior_when_values_tie():
    # all rewards 0: Q never moves, so PUCT spreads visits by prior; the first visit goes to the top prior
    search = MCTS(num_simulations=100, pb_c_base=None, dirichlet_fraction=0)
    result = search.search(Bandit([0.0] * 4, prior=[0.1, 0.6, 0.2, 0.1]), roots(1), rng())
    visits = result.visits[0]
    assert visits.sum() == 100 and visits.argmax() == 1
    assert visits[1] > visits[2] > max(visits[0], visits[3])


def test_terminal_root_gets_no_children():
    result = MCTS(num_simulations=5, dirichlet_fraction=0).search(Bandit([1.0, 1.0], root_terminal=True),
                                                                  roots(2), rng())  # fmt: skip
    assert result.visits.sum() == 0 and result.policy.sum() == 0
    assert result.tree.node_visits[:, ROOT_INDEX].tolist() == [6, 6]  # 1 + one per simulation
    assert result.tree.num_nodes.tolist() == [1, 1]


def test_all_but_one_action_masked():
    model = Bandit([0.0, 0.0, 1.0, 0.0], valid=[False, False, True, False], prior=[0.9, 0.05, 0.0, 0.05])
    result = MCTS(num_simulations=12).search(model, roots(3), rng())
    assert (result.visits == [0, 0, 12, 0]).all()
    assert (result.policy[:, 2] == 1.0).all()


def test_depth_limit_stops_expansion():
    model = HashTreeModel(seed=1, terminal_rate=0.0)
    result = MCTS(num_simulations=200, max_search_depth=2).search(model, model.roots(4), rng())
    assert result.tree.max_depth().tolist() == [2, 2, 2, 2]
    assert (result.tree.num_nodes <= 1 + K + K * K).all()


def test_dirichlet_noise_only_at_the_root():
    model = HashTreeModel(seed=2)
    result = MCTS(num_simulations=50, dirichlet_fraction=0.25).search(model, model.roots(3), rng())
    tree = result.tree
    clean_root = model.evaluate(result.states[:, ROOT_INDEX]).prior
    assert not np.allclose(tree.children_prior[:, ROOT_INDEX], clean_root)
    np.testing.assert_allclose(tree.children_prior[:, ROOT_INDEX].sum(axis=1), 1.0, rtol=1e-5)
    for b in range(3):
        nodes = np.arange(1, tree.num_nodes[b])
        live = nodes[~tree.node_terminal[b, nodes]]
        assert len(live) > 10
        np.testing.assert_array_equal(tree.children_prior[b, live], model.evaluate(result.states[b, live]).prior)


def test_visit_policy_temperatures():
    visits = np.array([[3, 7, 7, 1], [0, 0, 0, 0]], np.int32)
    assert visit_policy(visits, 0.0).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]  # ties: lowest index
    np.testing.assert_allclose(visit_policy(visits, 1.0)[0], [3 / 18, 7 / 18, 7 / 18, 1 / 18])
    np.testing.assert_allclose(visit_policy(visits, 0.5)[0], np.array([9, 49, 49, 1]) / 108)


def test_virtual_loss_spreads_one_round_over_distinct_leaves():
    model = HashTreeModel(seed=4, terminal_rate=0.0, invalid_rate=0.0)
    result = MCTS(num_simulations=4, leaves_per_round=4, dirichlet_fraction=0).search(model, model.roots(2), rng())
    assert result.tree.num_nodes.tolist() == [5, 5]  # four different leaves expanded in the one round
    assert result.tree.node_virtual.sum() == 0  # and every virtual visit was taken back


def test_kernels_called_one_by_one_build_the_drivers_tree():
    """select_leaves and backup, called from Python with the NamedTuples, do what the driver's fused round does."""
    model, b, width, rounds = HashTreeModel(seed=6), 4, 3, 10
    engine = MCTS(num_simulations=width * rounds, leaves_per_round=width, dirichlet_fraction=0).search(
        model, model.roots(b), rng()
    )
    tree = new_tree(b, width * rounds + 1, K)
    states = np.zeros((b, width * rounds + 1), model.state_dtype)
    states[:, ROOT_INDEX] = model.roots(b)
    root = model.evaluate(states[:, ROOT_INDEX])
    kernels.init_roots(tree, kernels.NewNodes(root.prior, root.valid, root.value, root.terminal))
    params = kernels.Params(kernels.exploration_table(width * rounds + 5, 1.25, 19652.0), 0.0, 1.0, 1.0, 64)
    leaves = kernels.new_leaves(b, width)
    for _ in range(rounds):
        m = kernels.select_leaves(tree, leaves, width, params)
        rows = leaves.exp_tree[:m]
        step = model.step(states[rows, leaves.exp_parent[:m]], leaves.exp_action[:m])
        states[rows, leaves.exp_node[:m]] = step.states
        new = step.expansion
        kernels.backup(tree, leaves, width, kernels.NewNodes(new.prior, new.valid, new.value, new.terminal),
                       step.reward, params)  # fmt: skip
    for name, ours, drivers in zip(tree._fields, tree, engine.tree, strict=True):
        np.testing.assert_array_equal(ours, drivers, err_msg=name)


def test_swapped_kernel_arguments_do_not_compile():
    from numba.core.errors import TypingError

    tree, leaves = new_tree(1, 4, 2), kernels.new_leaves(1, 1)
    params = kernels.Params(kernels.exploration_table(8, 1.0, -1.0), 0.0, 1.0, 1.0, 4)
    with pytest.raises(TypingError):
        kernels.select_leaves(leaves, tree, 1, params)


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="dirichlet_fraction"):
        MCTS(dirichlet_fraction=1.5)
    with pytest.raises(ValueError, match="num_simulations"):
        MCTS(num_simulations=0)


# -- identity with the plain-Python reference ---------------------------------------------------------

CONFIGS = {
    "default": dict(),
    "alphazero-constant-c": dict(pb_c_base=None, c_puct=2.0),
    "discount-fpu": dict(discount=0.9, fpu_value=0.3),
    "virtual-loss": dict(leaves_per_round=4, virtual_loss=0.5),
    "depth-limit-many-leaves": dict(max_search_depth=3, leaves_per_round=3),
    "no-noise": dict(dirichlet_fraction=0.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(name, seed):
    config = CONFIGS[name]
    model = HashTreeModel(seed=seed)
    starts = model.roots(6)
    engine = MCTS(num_simulations=60, **config).search(model, starts, np.random.default_rng(seed))
    ref = ReferenceSearch(num_simulations=60, **config)
    trees = ref.run(model, ref.new_roots(model, starts, np.random.default_rng(seed)))
    np.testing.assert_array_equal(engine.visits, root_visits(trees, K))
    np.testing.assert_allclose(engine.q_values, root_q(trees, K, config.get("discount", 1.0)), rtol=1e-12)
    assert engine.tree.num_nodes.tolist() == [count_nodes(t) for t in trees]
    assert engine.tree.max_depth().tolist() == [max_depth(t) for t in trees]
    np.testing.assert_allclose(engine.tree.q_min, ref.q_min, rtol=1e-12)


def test_subtree_reuse_matches_reference():
    model, b = HashTreeModel(seed=5), 4
    config = dict(num_simulations=40, leaves_per_round=2)
    engine, ref = MCTS(**config), ReferenceSearch(**config)
    engine_rng, ref_rng = np.random.default_rng(3), np.random.default_rng(3)
    first = engine.search(model, model.roots(b), engine_rng)
    trees = ref.run(model, ref.new_roots(model, model.roots(b), ref_rng))
    actions = first.visits.argmax(axis=1)
    children = first.tree.children_index[np.arange(b), ROOT_INDEX, actions]
    second = engine.search(model, first.states[np.arange(b), children], engine_rng,
                           reuse=(first.tree, first.states, children))  # fmt: skip
    trees = ref.run(model, reroot(ref, trees, [t.children[a] for t, a in zip(trees, actions, strict=True)], ref_rng))
    np.testing.assert_array_equal(second.visits, root_visits(trees, K))
    assert (second.visits.sum(axis=1) > 40).all()  # the kept subtree's visits carried over
    assert second.tree.num_nodes.tolist() == [count_nodes(t) for t in trees]


def test_matches_reference_without_jit():
    """The kernels run as plain Python under NUMBA_DISABLE_JIT=1 and still agree with the reference."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    tests = Path(__file__).parent
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "test_mcts.py"),
         "-k", "matches_reference and (default or virtual) and not without_jit"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert code.returncode == 0, code.stdout[-2000:] + code.stderr[-2000:]
    assert "4 passed" in code.stdout


@pytest.mark.parametrize(("q_bounds", "visits"), [("minmax", [1, 2]), ("fixed", [2, 1])])
def test_fixed_q_bounds_against_a_hand_computed_root(q_bounds, visits):
    """Two terminal children worth -0.6 and -0.5, priors 0.8 / 0.2, 3 simulations, c(N) sqrt(N) as MuZero's.

    Sim 1 takes a0 (the prior). minmax: sim 2 sees Qn = Q while the tree knows one Q: a0 -0.6 + c(2)√2·0.8/2 =
    0.107 < a1 0 + c(2)√2·0.2 = 0.354 -> a1; sim 3 rescales -0.6 / -0.5 to 0 / 1: a0 0 + c(3)√3·0.8/2 = 0.866 <
    a1 1 + c(3)√3·0.2/2 = 1.217 -> a1. fixed ([-1, 1] -> [0, 1]): sim 2: a0 0.2 + 0.707 = 0.907 > a1 (first-play 0 ->
    0.5) 0.5 + 0.354 = 0.854 -> a0; sim 3: a0 0.2 + c(3)√3·0.8/3 = 0.777 < a1 0.5 + c(3)√3·0.2 = 0.933 -> a1.
    """
    result = MCTS(num_simulations=3, dirichlet_fraction=0.0, q_bounds=q_bounds).search(
        Bandit([-0.6, -0.5], prior=[0.8, 0.2]), roots(1), np.random.default_rng(0)
    )
    assert result.visits[0].tolist() == visits


@pytest.mark.parametrize("q_bounds", ["minmax", "fixed"])
def test_fixed_q_bounds_in_the_gumbel_improved_policy(q_bounds):
    """Both children visited once: completed Q = -0.6 / -0.5, sigma = (c_visit + 1) c_scale x rescaled Q."""
    result = MCTS(num_simulations=2, root="gumbel", gumbel_scale=0.0, q_bounds=q_bounds).search(
        Bandit([-0.6, -0.5], prior=[0.8, 0.2]), roots(1), np.random.default_rng(0)
    )
    rescaled = np.array([0.0, 1.0]) if q_bounds == "minmax" else (np.array([-0.6, -0.5]) + 1) / 2
    logits = np.log([0.8, 0.2]) + (50 + 1) * 0.1 * rescaled
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(result.improved_policy[0], expected, rtol=1e-6)
