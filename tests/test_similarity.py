"""The ε-greedy similarity agent (the seed system's selection rule) and lexical similarity."""

from __future__ import annotations

import numpy as np
import pytest

from agents.similarity import SimilarityAgent, lexical_similarity
from azgym.env import ReasoningEnv
from azgym.tasks import Problem
from helpers import ScriptedLM

PROBLEM = Problem(id="p0", question="What is 2 + 3?", gold="5")


def test_lexical_similarity_ranks_and_bounds():
    same = lexical_similarity("2 + 3 = 5", "2 + 3 = 5")
    near = lexical_similarity("2 + 3 = 5", "2 + 3 = 6")
    far = lexical_similarity("2 + 3 = 5", "the cat sat on the mat")
    assert np.isclose(same, 1.0) and 1.0 > near > far >= 0.0
    assert lexical_similarity("", "") == 1.0 and lexical_similarity("ab", "cd") == 0.0


def make_env(**kwargs):
    teacher = ScriptedLM({"": [("2 + 3 = 6\n", False), ("2 + 3 = 5\n", False), ("I like cats\n", False)]})
    return ReasoningEnv([PROBLEM], model=teacher, num_right=2, num_wrong=1, rewards="outcome", **kwargs)


def test_greedy_picks_the_candidate_nearest_the_students_step():
    env = make_env()
    env.reset(seed=0)
    student = ScriptedLM({"": [("2 + 3 = 5\n", False)]})
    policy = SimilarityAgent(student, epsilon=0.0).policy(env, [env.get_state()]).probs[0]
    texts = [c.text for c in env.candidates()]
    assert policy[texts.index("2 + 3 = 5\n")] == 1.0 and policy.sum() == 1.0


def test_epsilon_spreads_mass_over_valid_candidates_only():
    env = make_env()
    env.reset(seed=0)
    student = ScriptedLM({"": [("2 + 3 = 5\n", False)]})
    agent = SimilarityAgent(student, epsilon=0.3, seed=0)
    policy = agent.policy(env, [env.get_state()]).probs[0]
    assert np.isclose(policy.sum(), 1.0) and np.isclose(policy.max(), 0.7 + 0.1) and (policy[:3] > 0).all()
    actions = {agent.act(env) for _ in range(30)}
    assert len(actions) > 1 and actions <= {0, 1, 2}


def test_embedding_similarity_uses_the_students_hidden_states(tiny_lm, gsm8k_problems):
    env = ReasoningEnv(gsm8k_problems[:1], model=tiny_lm, num_right=2, num_wrong=1, chunk_tokens=6, max_tokens=24)
    env.reset(seed=0)
    agent = SimilarityAgent(tiny_lm, epsilon=0.0, similarity="embedding", seed=0)
    policy = agent.policy(env, [env.get_state()]).probs[0]
    assert np.isclose(policy.sum(), 1.0) and policy.max() == 1.0
    vectors = tiny_lm.embed(["2 + 3 = 5", "2 + 3 = 5", "cats"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0) and np.isclose(vectors[0] @ vectors[1], 1.0, atol=1e-5)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="epsilon must be in"):
        SimilarityAgent(ScriptedLM({}), epsilon=1.5)
    with pytest.raises(ValueError, match="needs a backend with embed"):
        SimilarityAgent(ScriptedLM({}), similarity="embedding")


def test_self_play_runs_with_the_similarity_agent():
    from agents.alphazero.selfplay import self_play

    env = make_env(max_steps=1)
    student = ScriptedLM({"": [("2 + 3 = 5\n", False)]})
    episodes, stats = self_play(env, SimilarityAgent(student, epsilon=0.0, seed=0), [0], 3,
                                np.random.default_rng(0), iteration=0, weights_version=0, progress=False)  # fmt: skip
    assert len(episodes) == 3 and stats.moves >= 1
    chosen = {env.lm.decode(e.steps[0].candidates[e.steps[0].action]) for e in episodes}
    assert chosen == {"2 + 3 = 5\n"}  # greedy: the nearest, every time
