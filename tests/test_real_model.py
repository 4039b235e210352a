"""The real default model (SmolLM2-135M-Instruct from the packaged GGUF) in the environment."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import azgym  # noqa: F401  (registers the environments)

pytestmark = pytest.mark.slow


def test_check_env_on_smollm2(gsm8k_dir):
    env = gym.make("AZLLM-GSM8K-v0", data=gsm8k_dir, split="test", chunk_tokens=16, max_steps=3, render_mode="ansi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def test_gsm8k_episode_on_smollm2_runs_to_a_grade(gsm8k_dir):
    env = gym.make("AZLLM-GSM8K-v0", data=gsm8k_dir, split="test", render_mode="ansi")
    _, info = env.reset(seed=0, options={"problem_index": 0})
    assert 1 <= len(info["candidates"]) <= 4 and set(info["labels"]) <= {"right", "wrong"}
    assert np.isclose(info["priors"].sum(), 1.0)
    done, steps = False, 0
    while not done:
        action = int(np.argmax(info["priors"]))  # follow the teacher's prior
        _, reward, terminated, truncated, info = env.step(action)
        assert np.isfinite(reward)
        done, steps = terminated or truncated, steps + 1
    assert steps <= 12 and "grade" in info
    text = env.render()
    assert "Janet" in text and info["response"].strip()[:20] in text and "gold 18" in text


def test_mcts_agent_plays_a_gsm8k_episode_on_smollm2(gsm8k_dir):
    from agents.mcts import MCTSAgent
    from agents.student.value import LMValueFunction

    env = gym.make("AZLLM-GSM8K-v0", data=gsm8k_dir, split="test", chunk_tokens=24, max_steps=4)
    agent = MCTSAgent(LMValueFunction(env.unwrapped.lm), num_simulations=2, seed=0)
    _, info = env.reset(seed=0, options={"problem_index": 1})
    done, steps = False, 0
    while not done:
        action = agent.act(env)
        assert agent.last_result.visits.sum() >= 2 and info["action_mask"][action]
        _, _, terminated, truncated, info = env.step(action)
        done, steps = terminated or truncated, steps + 1
    assert 1 <= steps <= 4 and "grade" in info and info["response"]


def test_two_model_local_ensemble_proposes_in_gsm8k_and_passes_check_env(gsm8k_dir):
    env = gym.make("AZLLM-GSM8K-v0", data=gsm8k_dir, split="test", teachers="local", chunk_tokens=12, max_steps=2)
    ensemble = env.unwrapped.proposer
    assert [t.name for t in ensemble.teachers] == ["smollm2-135m-instruct", "gemma3-270m"]
    assert ensemble.teachers[0].lm is env.unwrapped.lm and ensemble.teachers[1].style == "few_shot"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    _, info = env.reset(seed=0, options={"problem_index": 0})
    candidates = env.unwrapped.candidates()
    assert {c.teacher for c in candidates} == {"smollm2-135m-instruct", "gemma3-270m"}
    assert np.isclose(info["priors"].sum(), 1.0) and not ensemble.dropped
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(int(np.argmax(info["priors"])))
        done = terminated or truncated
    assert "grade" in info and np.isfinite(reward)
