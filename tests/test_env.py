"""ReasoningEnv: Gymnasium conformance, determinism, rewards, planning and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import InvalidAction, ResetNeeded
from gymnasium.utils.env_checker import check_env

import azgym
from azgym.env import PAD, EnvState, ReasoningEnv
from azgym.lm.registry import ModelNotFoundError
from azgym.rewards import RewardConfig
from azgym.tasks import Problem
from helpers import ScriptedLM

SMALL = dict(chunk_tokens=8, max_steps=4, max_tokens=32)


@pytest.fixture()
def tiny_env(tiny_lm, gsm8k_problems):
    return gym.make("AZLLM-GSM8K-v0", data=gsm8k_problems, model=tiny_lm, render_mode="ansi", **SMALL)


def rollout(env, seed, actions=None):
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for step in range(10):
        action = actions[step] if actions else int(np.flatnonzero(info["action_mask"])[-1])
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return trace


def assert_same(a, b):
    assert gym.utils.env_checker.data_equivalence(a, b), f"{a!r} != {b!r}"


def test_check_env_passes_without_warnings(tiny_env):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(tiny_env.unwrapped)


def test_registered_with_and_without_import(tiny_lm, gsm8k_problems):
    assert "AZLLM-GSM8K-v0" in gym.registry
    env = gym.make("azgym:AZLLM-GSM8K-v0", data=gsm8k_problems, model=tiny_lm, **SMALL)
    assert isinstance(env.unwrapped, azgym.ReasoningEnv)
    assert env.unwrapped.task.NAME == "gsm8k"


def test_same_seed_same_episode_in_a_fresh_env(tiny_env, tiny_lm, gsm8k_problems):
    other = gym.make("AZLLM-GSM8K-v0", data=gsm8k_problems, model=tiny_lm, **SMALL)
    first, second = rollout(tiny_env, seed=7), rollout(other, seed=7)
    assert len(first) == len(second) > 1
    assert_same(first, second)
    assert rollout(tiny_env, seed=8)[0][1]["candidates"] != first[0][1]["candidates"]


def test_observation_holds_question_and_response_tokens(tiny_env, tiny_lm):
    obs, info = tiny_env.reset(seed=0)
    question = tiny_lm.encode(info["question"])
    assert obs["question_ids"][: len(question)].tolist() == question
    assert (obs["response_ids"] == PAD).all() and obs["depth"] == 0
    obs, _, _, _, info = tiny_env.step(0)
    response = obs["response_ids"][obs["response_ids"] != PAD]
    assert tiny_lm.decode(response.tolist()) == info["response"] != ""
    assert obs["depth"] == 1


def test_truncates_at_max_depth_and_grades(tiny_env):
    trace = rollout(tiny_env, seed=3)
    *_, (obs, reward, terminated, truncated, info) = trace
    assert terminated or truncated
    assert obs["depth"] <= SMALL["max_steps"]
    assert set(info["grade"]) == {"correct", "format_ok", "parsed", "flexible_correct", "flexible_parsed"}


def test_get_state_set_state_restores_exactly(tiny_env):
    env = tiny_env.unwrapped
    _, info0 = env.reset(seed=11)
    saved = env.get_state()
    after_a = env.step(0)
    env.step(1 if after_a[4]["action_mask"][1] else 0)
    env.set_state(saved)
    assert env.get_state() == saved
    assert env.candidates() == env.expand([saved])[0]
    assert_same(env.step(0), after_a)


def test_reset_options_choose_the_problem(tiny_env, gsm8k_problems):
    _, info = tiny_env.reset(seed=0, options={"problem_index": 5})
    assert info["problem_id"] == gsm8k_problems[5].id
    _, info = tiny_env.reset(options={"problem_id": gsm8k_problems[2].id})
    assert info["question"] == gsm8k_problems[2].question
    with pytest.raises(ValueError, match="out of range"):
        tiny_env.reset(options={"problem_index": 99})
    with pytest.raises(ValueError, match="unknown reset options"):
        tiny_env.reset(options={"level": 3})


def test_render_ansi_shows_question_response_and_candidates(tiny_env):
    _, info = tiny_env.reset(seed=0)
    text = tiny_env.render()
    assert info["question"] in text and "right" in text and "depth 0/4" in text


# -- bad input ------------------------------------------------------------------------------------


def test_step_before_reset_is_a_clear_error(tiny_env):
    with pytest.raises(ResetNeeded, match=r"call reset\(\)"):
        tiny_env.unwrapped.step(0)


@pytest.mark.parametrize("action", [4, -1, 1.5, "0", None])
def test_action_out_of_range_is_a_clear_error(tiny_env, action):
    tiny_env.reset(seed=0)
    with pytest.raises(InvalidAction, match=r"integer in \[0, 3\]"):
        tiny_env.unwrapped.step(action)


def test_step_after_episode_end_asks_for_reset(tiny_env):
    rollout(tiny_env, seed=1)
    with pytest.raises(ResetNeeded, match="episode has ended"):
        tiny_env.unwrapped.step(0)


def test_unknown_model_name_lists_known_names(gsm8k_problems):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct") as err:
        ReasoningEnv(gsm8k_problems, model="smollm2-135m")
    assert "Did you mean" in str(err.value)


def test_missing_data_path_is_a_clear_error(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ReasoningEnv(str(tmp_path / "nope.jsonl"), model=tiny_lm)


def test_env_var_overrides_defaults_but_not_arguments(tiny_lm, gsm8k_problems, monkeypatch):
    monkeypatch.setenv("MAX_TREE_DEPTH", "3")
    monkeypatch.setenv("MAX_TOKENS", "40")
    env = ReasoningEnv(gsm8k_problems, model=tiny_lm)
    assert (env.max_steps, env.max_tokens) == (3, 40)
    assert ReasoningEnv(gsm8k_problems, model=tiny_lm, max_steps=5).max_steps == 5
    monkeypatch.setenv("MAX_TREE_DEPTH", "deep")
    with pytest.raises(ValueError, match="MAX_TREE_DEPTH"):
        ReasoningEnv(gsm8k_problems, model=tiny_lm)


# -- exact rewards on a scripted teacher ------------------------------------------------------------

PROBLEM = Problem(id="p0", question="What is 2 + 3?", gold="5")
SCRIPT = {
    "": [("2 + 3 = 5\n", False), ("2 + 3 = 6\n", False)],
    "2 + 3 = 5\n": [("#### 5\n", False), ("#### 6\n", False)],
    "2 + 3 = 6\n": [("#### 6\n", False), ("", True)],
}


def scripted_env(**kwargs):
    lm = ScriptedLM(SCRIPT, token_logprob=-0.5)
    return ReasoningEnv([PROBLEM], model=lm, num_right=1, num_wrong=1, **kwargs), lm


def test_seed_preset_rewards_term_by_term():
    env, _ = scripted_env()
    _, info = env.reset(seed=0)
    assert info["candidates"] == ["2 + 3 = 5\n", "2 + 3 = 6\n"] and info["labels"] == ["right", "wrong"]
    np.testing.assert_allclose(info["priors"], [0.5, 0.5])  # equal log-probs -> equal priors
    _, r0, term, trunc, info = env.step(0)
    assert not (term or trunc)
    assert r0 == pytest.approx(0.6 * -0.5 - 0.01 + 0.1)
    _, r1, term, _, info = env.step(0)  # "#### 5": correct, terminal
    assert term and info["grade"]["correct"] and info["grade"]["format_ok"]
    assert r1 == pytest.approx(0.4 * 1.0 + 0.6 * 0.95 * -0.5 - 0.01 + 0.1)
    assert env.get_state().episode_return == pytest.approx(r0 + r1)
    assert env.get_state().pre_return == pytest.approx(-0.5 - 0.95 * 0.5)


def test_wrong_answer_pays_the_loss_outcome():
    env, _ = scripted_env()
    env.reset(seed=0)
    _, r0, *_ = env.step(1)  # the "wrong" candidate
    assert r0 == pytest.approx(0.6 * -0.5 - 0.01 - 0.05)
    assert env.get_state().episode_return == pytest.approx(r0)  # no outcome before the end
    _, r1, term, _, info = env.step(0)  # "#### 6"
    assert term and not info["grade"]["correct"] and info["reward_terms"]["hre"] == -1.0
    assert r1 == pytest.approx(0.4 * -1.0 + 0.6 * 0.95 * -0.5 - 0.01 + 0.1)


def test_end_of_sequence_terminates_and_outcome_preset_pays_only_hre():
    env, _ = scripted_env(rewards="outcome")
    env.reset(seed=0)
    _, r0, *_ = env.step(1)
    assert r0 == 0.0
    _, r1, term, _, info = env.step(1)  # the teacher ends its response: terminal, no answer
    assert term and r1 == -1.0 and info["grade"]["parsed"] is None
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[1] == 1.0


def test_flexible_answer_rewards_the_last_number_of_a_truncated_episode():
    lm = ScriptedLM({"": [("2 + 3 = 5\n", False)], "2 + 3 = 5\n": [("so five\n", False)]})
    strict = ReasoningEnv([PROBLEM], model=lm, num_right=1, num_wrong=0, max_steps=1, rewards="outcome")
    strict.reset(seed=0)
    assert strict.step(0)[1] == -1.0  # truncated, no marker: a loss under the strict default
    flexible = RewardConfig(hre_weight=1.0, pre_weight=0.0, length_penalty=0.0, right_bonus=0.0, answer="flexible")
    env = ReasoningEnv([PROBLEM], model=lm, num_right=1, num_wrong=0, max_steps=1, rewards=flexible)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(0)
    assert truncated and not terminated and reward == 1.0 and info["grade"]["flexible_correct"]


def test_custom_reward_weights():
    env, _ = scripted_env(rewards=RewardConfig(hre_weight=2.0, pre_weight=0.0, length_penalty=0.0, right_bonus=0.0))
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[1] == pytest.approx(2.0)


def test_candidates_are_cached_per_state():
    env, lm = scripted_env()
    env.reset(seed=0)
    state = env.get_state()
    calls = lm.generate_calls
    env.step(0)
    env.set_state(state)
    assert env.candidates()[0].text == "2 + 3 = 5\n"
    env.step(0)
    assert lm.generate_calls == calls + 1  # only the new child state was generated


def test_duplicates_are_merged_and_an_empty_slot_plays_the_slot_it_wraps_onto():
    lm = ScriptedLM({"": [("same\n", False)], "same\n": [("one\n", False), ("two\n", False)]})
    env = ReasoningEnv([PROBLEM], model=lm, num_right=2, num_wrong=1, max_steps=2)
    _, info = env.reset(seed=0)
    assert info["candidates"] == ["same\n"] and info["action_mask"].tolist() == [1, 0, 0]
    _, _, _, _, info = env.step(2)  # empty: 2 mod 1 = slot 0
    assert info["action_played"] == 0 and info["response"] == "same\n"
    assert info["candidates"] == ["one\n", "two\n"] and info["action_mask"].tolist() == [1, 1, 0]
    _, _, _, _, info = env.step(2)  # empty: 2 mod 2 = slot 0
    assert info["action_played"] == 0 and info["response"] == "same\none\n"


class _AnyState(dict):
    """Every state's steps: a duplicate pair (merged, so one slot is empty), another step, a final answer."""

    def __missing__(self, response):
        return [("a = 2\n", False), ("a = 2\n", False), ("b = 3\n", False), ("#### 5", True)]


@pytest.mark.parametrize("env_id", ["AZLLM-GSM8K-v0", "AZLLM-Arithmetic-v0", "AZLLM-Countdown-v0"])
def test_a_random_agent_plays_every_registered_env_to_the_end(env_id, gsm8k_problems):
    data = {"AZLLM-GSM8K-v0": gsm8k_problems}.get(env_id)
    env = gym.make(env_id, data=data, model=ScriptedLM(_AnyState()), num_right=2, num_wrong=2, max_steps=4)
    env.action_space.seed(0)
    merged = 0
    for episode in range(50):
        _, info = env.reset(seed=episode)
        done = False
        while not done:
            merged += int(info["action_mask"].sum() < env.action_space.n)
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert np.isfinite(reward)
            done = terminated or truncated
    assert merged > 0, "no state had an empty slot: the test did not reach the case it is about"


def test_state_is_a_small_immutable_snapshot():
    env, _ = scripted_env()
    env.reset(seed=0)
    state = env.get_state()
    assert isinstance(state, EnvState)
    with pytest.raises(AttributeError):
        state.depth = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="EnvState"):
        env.set_state({"depth": 0})


class Judge(ScriptedLM):
    """Scores "yes" above "no" once the response mentions five."""

    def score(self, prompts, continuations):
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            complete = "= 5" in self.decode(p)
            yes = self.decode(c) == "yes"
            out.append(np.full(len(c), -0.1 if yes == complete else -3.0, dtype=np.float32))
        return out


def test_model_terminal_checker_ends_an_episode_the_rule_would_continue():
    script = {"": [("2 + 3 = 5\n", False)], "2 + 3 = 5\n": [("so five\n", False)]}
    rule = ReasoningEnv([PROBLEM], model=ScriptedLM(script), num_right=1, num_wrong=0, rewards="outcome")
    rule.reset(seed=0)
    assert not rule.step(0)[2]  # no answer marker: the rule goes on
    judged = ReasoningEnv([PROBLEM], model=Judge(script), num_right=1, num_wrong=0, terminal="model")
    judged.reset(seed=0)
    _, _, terminated, _, info = judged.step(0)
    assert terminated and "grade" in info
    assert judged.terminal.p_complete(PROBLEM.question, judged.get_state().response_ids) > 0.9
    assert judged.terminal.p_complete(PROBLEM.question, ()) < 0.1  # the empty response is not complete
    with pytest.raises(ValueError, match="unknown terminal checker 'llm'"):
        ReasoningEnv([PROBLEM], model=Judge(script), terminal="llm")
