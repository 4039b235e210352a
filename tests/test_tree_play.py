"""Tree self-play: Monte Carlo node values and TreeRL step advantages against a hand-computed tree,
the samples they become, per-token advantages in the loss, and a whole tree phase on real parts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_mcts_agent import scripted_env as scripted_env_and_lm

from agents.alphazero.config import cpu_preset
from agents.alphazero.player import Player
from agents.alphazero.selfplay import to_samples
from agents.alphazero.tree_play import (
    Ending,
    RolloutValue,
    TreeData,
    TreeSelfPlay,
    episodes_of_tree,
    node_values,
    step_advantage,
)
from agents.mcts.env_model import EnvSearchModel, normalised_entropy
from agents.mcts.search import SearchConfig, SearchResult
from agents.mcts.tree import NO_PARENT, new_tree
from agents.policy import constant_value
from agents.training import losses
from agents.training.learner import Learner, LearnerConfig, Sample
from azgym.env import ReasoningEnv


def scripted_env():
    """2 + 3 with a right and a wrong first step (the MCTS agent tests' script)."""
    return scripted_env_and_lm()[0]


def hand_tree(env):
    """root -> (a0) "2 + 3 = 5" -> (a0) "#### 5" (terminal); root -> (a1) "2 + 3 = 6".

    Endings: the root's rollout fails (-1), node 1's rollout solves (+1), node 2's fails (-1), node 3
    is a correct answer (+1). So V3 = 1, V1 = (1 + 1) / 2 = 1, V2 = -1, V0 = (-1 + 1 + 1 - 1) / 4 = 0.
    """
    root = env.initial_state(0, seed=1)
    one = env.transition(root, 0).state
    two = env.transition(root, 1).state
    three = env.transition(one, 0).state
    assert three.terminated and not one.terminated
    tree = new_tree(1, 4, 2)
    for node, (parent, action) in enumerate([(NO_PARENT, -1), (0, 0), (0, 1), (1, 0)]):
        tree.node_parent[0, node], tree.node_action[0, node] = parent, action
        if parent >= 0:
            tree.children_index[0, parent, action] = node
            tree.node_visits[0, node] = 1
    tree.num_nodes[0] = 4
    states = np.empty((1, 4), dtype=object)
    states[0, :] = [root, one, two, three]
    enc = env.lm.encode
    ends = [
        Ending(tuple(enc("2 + 3 = 6\n#### 6\n")), -1.0, False, True, False, False),
        Ending(one.response_ids + tuple(enc("#### 5\n")), 1.0, True, True, True, False),
        Ending(two.response_ids + tuple(enc("#### 6\n")), -1.0, False, True, False, False),
        Ending(three.response_ids, 1.0, True, True, True, False),
    ]
    result = SearchResult(visits=np.zeros((1, 2), np.int32), policy=np.zeros((1, 2)), q_values=np.zeros((1, 2)),
                          root_value=np.zeros(1), tree=tree, states=states, num_simulations=3)  # fmt: skip
    return result, ends


def test_node_values_are_subtree_means_of_the_responses():
    env = scripted_env()
    result, ends = hand_tree(env)
    values, leaves = node_values(result.tree, 0, ends)
    assert values.tolist() == [0.0, 1.0, -1.0, 1.0]
    assert leaves.tolist() == [4.0, 2.0, 1.0, 1.0]


def test_tree_advantages_hand_computed():
    env = scripted_env()
    result, ends = hand_tree(env)
    values, leaves = node_values(result.tree, 0, ends)
    episodes = episodes_of_tree(env, TreeData(result, 0, ends, values, leaves), iteration=0, weights_version=0)
    assert len(episodes) == 4  # one response per node, every node's tokens in some sample
    by_node = dict(enumerate(episodes))
    step = len(env.lm.encode("2 + 3 = 5\n"))
    answer = len(env.lm.encode("#### 5\n"))
    # node 3 (the correct answer): edge 0->1 gets (2*1 - 0 - 0)/sqrt(2), edge 1->3 (2*1 - 1 - 0)/1
    assert by_node[3].token_advantages == [round(math.sqrt(2), 6)] * step + [1.0] * answer
    assert by_node[3].value_targets == [[0, 0.0], [step, 1.0], [step + answer, 1.0]]
    # node 1: the same first step, then its rollout (a leaf of its own): 2*1 - V1 - V0 = 1
    assert by_node[1].token_advantages == [round(math.sqrt(2), 6)] * step + [1.0] * answer
    assert by_node[1].value_targets == [[0, 0.0], [step, 1.0], [step + answer, 1.0]]
    # node 2 (the wrong step): 2*(-1) - 0 - 0 = -2, its rollout 2*(-1) - (-1) - 0 = -1
    assert by_node[2].token_advantages == [-2.0] * step + [-1.0] * answer
    # the root's own rollout: 2*(-1) - 0 - 0 = -2 on every token
    assert set(by_node[0].token_advantages) == {-2.0} and len(by_node[0].token_advantages) == len(ends[0].token_ids)
    assert by_node[3].steps[0].action == 0 and by_node[3].steps[1].response_len == step
    assert step_advantage(0.5, 0.5, 0.5, 9.0) == 0.0


def test_tree_episodes_become_samples_with_their_own_advantages_and_value_targets():
    env = scripted_env()
    result, ends = hand_tree(env)
    values, leaves = node_values(result.tree, 0, ends)
    episodes = episodes_of_tree(env, TreeData(result, 0, ends, values, leaves), iteration=0, weights_version=0)
    samples = to_samples(episodes, eos_token_id=0)
    three = samples[3]
    assert len(three.completion_ids) == len(episodes[3].response_ids) + 1  # the end token, trained too
    assert len(three.advantages) == len(three.completion_ids) and three.advantages[-1] == 1.0
    assert three.value_positions == (0, 10, 17) and three.value_targets == (0.0, 1.0, 1.0)


def test_per_token_advantages_in_the_grpo_loss_hand_computed():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    per_token = torch.tensor([[2.0, -1.0, 5.0], [0.5, 0.5, -3.0]])
    loss, _ = losses.grpo_loss(logp, logp, None, per_token, mask, kl_coef=0.0, aggregation="token")
    # ratio 1: the loss is minus the mean advantage over the 5 trained tokens
    assert float(loss) == pytest.approx(-(2.0 - 1.0 + 0.5 + 0.5 - 3.0) / 5)
    grad_logp = logp.clone().requires_grad_(True)
    loss, _ = losses.grpo_loss(grad_logp, logp, None, per_token, mask, kl_coef=0.0, aggregation="token")
    loss.backward()
    assert torch.allclose(grad_logp.grad, -per_token * mask / 5)  # each token pushed by its own advantage


def test_learner_places_per_token_advantages_at_the_completion_and_clips_them(tokenizer):
    from test_learner import make_student

    learner = Learner(make_student(tokenizer), LearnerConfig(adv_clip=3.0))
    samples = [Sample((5, 6, 7), (8, 9), 1.0, "a", advantages=(4.0, -0.5)), Sample((5, 6), (8, 9, 10), 0.0, "a")]
    group = torch.tensor([0.25, -0.25])
    like = torch.zeros(2, 4)  # [B, T-1] of the 5-token longest sequence
    out = learner._token_advantages(samples, group, like)
    assert out[0, 2:4].tolist() == [3.0, -0.5]  # clipped to adv_clip, at the completion's positions
    assert out[1].tolist() == [-0.25] * 4  # no per-token advantages: the group's, on every position
    metrics = learner.step(samples)
    assert math.isfinite(metrics["loss"])


def test_a_tree_phase_trains_on_every_node(tiny_lm, gsm8k_problems):
    env = ReasoningEnv(gsm8k_problems[:2], model=tiny_lm, chunk_tokens=4, max_steps=3, max_tokens=12)
    play = TreeSelfPlay(tiny_lm, SearchConfig(num_simulations=5, leaves_per_round=2), value_fn=constant_value(0.0),
                        seed=0)  # fmt: skip
    episodes, stats = play.play(env, [0, 1], np.random.default_rng(0), iteration=3, weights_version=7)
    nodes = stats.tree_nodes[0]
    assert len(episodes) == pytest.approx(2 * nodes)  # one response per node of each tree
    assert all(len(e.token_advantages) == len(e.response_ids) for e in episodes)
    assert {e.iteration for e in episodes} == {3} and {e.weights_version for e in episodes} == {7}
    tree_stats = play.last_tree_stats
    assert 0 < tree_stats.trained_token_fraction <= 1 and stats.generated_tokens > 0
    again, _ = TreeSelfPlay(tiny_lm, SearchConfig(num_simulations=5, leaves_per_round=2),
                            value_fn=constant_value(0.0), seed=0).play(env, [0, 1], np.random.default_rng(0),
                                                                       iteration=3, weights_version=7)  # fmt: skip
    assert [e.response_ids for e in again] == [e.response_ids for e in episodes]  # seeded: the same tree


def test_sibling_ranking_of_the_value_head_and_the_priors():
    env = scripted_env()
    result, ends = hand_tree(env)
    result.tree.children_prior[0, 0, :] = [0.2, 0.8]  # the priors prefer the wrong step (node 2)
    values, leaves = node_values(result.tree, 0, ends)

    def knows(env, states):  # a value head that ranks the right first step above the wrong one
        return np.array([1.0 if env.lm.decode(s.response_ids).endswith("= 5\n") else -1.0 for s in states])

    play = TreeSelfPlay(env.lm, SearchConfig(num_simulations=2), value_fn=knows)
    right_v, right_p, pairs = play._sibling_ranks(env, TreeData(result, 0, ends, values, leaves))
    assert (right_v, right_p, pairs) == (1.0, 0.0, 1)  # one sibling pair with different values: nodes 1 and 2
    tied = TreeSelfPlay(env.lm, SearchConfig(num_simulations=2), value_fn=constant_value(0.0))
    assert tied._sibling_ranks(env, TreeData(result, 0, ends, values, leaves))[0] == 0.5  # a tie is half right


def test_entropy_branching_searches_only_the_likeliest_step_where_the_priors_are_sure(tiny_lm, gsm8k_problems):
    env = ReasoningEnv(gsm8k_problems[:2], model=tiny_lm, chunk_tokens=4, max_steps=3, max_tokens=12)
    roots = [env.initial_state(i, seed=i) for i in range(2)]
    everywhere = EnvSearchModel(env, constant_value(0.0)).evaluate(roots)
    assert everywhere.valid.sum(axis=1).min() >= 2
    sure = normalised_entropy(everywhere.prior, everywhere.valid)  # random weights: never exactly uniform
    narrowed = EnvSearchModel(env, constant_value(0.0), branch_entropy=min(float(sure.max()) + 1e-6, 1.0)).evaluate(
        roots
    )
    assert narrowed.valid.sum(axis=1).tolist() == [1, 1]
    assert narrowed.prior.argmax(axis=1).tolist() == everywhere.prior.argmax(axis=1).tolist()
    assert narrowed.prior.max(axis=1).tolist() == [1.0, 1.0]
    between = float(np.sort(sure)[0]) + 1e-6  # narrows the surer root only
    model = EnvSearchModel(env, constant_value(0.0), branch_entropy=between)
    assert model.evaluate(roots).valid.sum(axis=1).tolist() == [
        1 if h < between else int(v.sum()) for h, v in zip(sure, everywhere.valid, strict=True)]  # fmt: skip
    assert (model.nodes, model.branching) == (2, 1)

    def play(threshold):
        tree_play = TreeSelfPlay(tiny_lm, SearchConfig(num_simulations=5), value_fn=constant_value(0.0), seed=0,
                                 branch_entropy=threshold)  # fmt: skip
        episodes, stats = tree_play.play(env, [0, 1], np.random.default_rng(0), iteration=0, weights_version=0)
        return episodes, tree_play.last_tree_stats

    chain, chain_stats = play(1.0)  # every node narrowed: each tree is a chain, one response per node
    assert chain_stats.branching_fraction == 0.0 and len(chain) >= 2
    wide, wide_stats = play(0.0)
    assert wide_stats.branching_fraction == 1.0
    with pytest.raises(ValueError, match="branch_entropy must lie in"):
        EnvSearchModel(env, constant_value(0.0), branch_entropy=1.5)


def test_move_by_move_search_can_value_its_leaves_by_rollouts(tiny_dir):
    base = cpu_preset()
    config = replace(
        base,
        env=replace(base.env, chunk_tokens=4, max_steps=2, max_tokens=8, rewards="outcome"),
        search=replace(base.search, num_simulations=3, dirichlet_fraction=0.0),
        student=replace(base.student, model=str(tiny_dir)),
        loop=replace(base.loop, selfplay="moves", group_size=2, leaf_value="rollout", progress=False),
    )  # fmt: skip
    player = Player.from_config(config)
    rollouts = player.agent.value_fn
    assert isinstance(rollouts, RolloutValue) and rollouts.value_weight == 0.0
    episodes, stats, tree_stats = player.play(player.starts([0, 1], np.random.default_rng(0)), iteration=0,
                                              weights_version=0)  # fmt: skip
    assert tree_stats is None and len(episodes) == 4
    proposed = sum(len(c) for e in episodes for s in e.steps for c in s.candidates)
    assert rollouts.generated_tokens > 0 and stats.generated_tokens == proposed + rollouts.generated_tokens
    assert rollouts.endings == {}  # the played path alone is trained: nothing kept
    once = [s.q_values[a] for e in episodes for s in e.steps for a, n in enumerate(s.visits) if n == 1]
    assert once and set(once) <= {-1.0, 1.0}  # a leaf visited once is worth its graded end, not a value estimate
    with pytest.raises(ValueError, match="leaf_value"):
        replace(base.loop, selfplay="tree", leaf_value="rollout")
