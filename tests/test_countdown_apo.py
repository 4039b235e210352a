"""Countdown as a training signal: partial-credit terminal rewards, the sampling-temperature schedule,
A*PO's advantage normalisation and the countdown preset (config, then a one-iteration run)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents.alphazero.config import ALIASES, PRESETS, LoopConfig, RunConfig, sampling_temperature
from agents.student import Student, StudentConfig
from agents.training import losses
from agents.training.learner import Learner, LearnerConfig, Sample
from azgym.cli import parse_config
from azgym.config import ConfigError, EnvConfig
from azgym.env import ReasoningEnv
from azgym.prompts import TASK_EXAMPLES, TASK_SYSTEM_PROMPTS, system_prompt
from azgym.rewards import RewardConfig, hard_reward, partial_outcome, resolve_rewards, step_reward
from azgym.tasks import Problem, arithmetic, countdown, gsm8k
from azgym.tasks.base import has_partial_credit
from helpers import ScriptedLM, tiny_llama

REPO = Path(__file__).resolve().parents[1]
PUZZLE = Problem(id="cd-0", question="Reach 100 with 3, 7, 25.", gold="3,7,25 -> 100")
NO_NUMBERS = "<answer>1 + 1</answer>\n"  # format 0.1 + valid 0.1 + operators 0.1, no given number used: 0.3


def run_config(argv) -> RunConfig:
    return parse_config(RunConfig, argv, environ={}, presets=PRESETS, default_preset="cpu", aliases=ALIASES)


# -- partial credit as the terminal reward ---------------------------------------------------------


def test_partial_outcome_maps_credit_onto_the_value_scale():
    assert partial_outcome(1.0) == 1.0 and partial_outcome(0.0) == -1.0
    assert partial_outcome(0.3) == pytest.approx(-0.4) and partial_outcome(0.75) == pytest.approx(0.5)
    assert hard_reward(True, False, credit=0.3) == pytest.approx(-0.4)
    assert hard_reward(False, False, credit=0.3) == 0.0  # no outcome before the end
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        partial_outcome(1.5)
    partial = resolve_rewards("partial")
    assert partial == replace(resolve_rewards("outcome"), credit="partial")
    terms = step_reward(partial, depth=2, pre=-3.0, label="wrong", ended=True, correct=False, credit=0.3)
    assert terms["hre"] == terms["total"] == pytest.approx(-0.4)
    binary = step_reward(resolve_rewards("outcome"), depth=2, pre=-3.0, label="wrong", ended=True, correct=False,
                         credit=0.3)  # fmt: skip
    assert binary["total"] == -1.0  # a credit is ignored unless the preset pays it
    with pytest.raises(ValueError, match="partial credit"):
        step_reward(partial, depth=0, pre=0.0, label="right", ended=True, correct=False)
    with pytest.raises(ValueError, match="credit"):
        RewardConfig(credit="some")


def test_only_countdown_has_partial_credit_and_it_is_its_score():
    assert has_partial_credit(countdown) and not has_partial_credit(arithmetic) and not has_partial_credit(gsm8k)
    assert countdown.partial_credit(NO_NUMBERS, PUZZLE.gold) == pytest.approx(0.3)
    assert countdown.partial_credit("<answer>(7 - 3) * 25</answer>", PUZZLE.gold) == 1.0
    response = "<answer>25 * 3 + 7</answer>"
    assert countdown.partial_credit(response, PUZZLE.gold) == countdown.score(response, [3, 7, 25], 100).reward


@pytest.mark.parametrize(("text", "reward", "solved"), [(NO_NUMBERS, -0.4, False),
                                                        ("<answer>(7 - 3) * 25</answer>\n", 1.0, True),
                                                        ("no idea\n", -1.0, False)])  # fmt: skip
def test_countdown_episode_pays_its_partial_credit_and_solved_stays_exact(text, reward, solved):
    lm = ScriptedLM({"": [(text, False)]})
    env = ReasoningEnv([PUZZLE], model=lm, task="countdown", num_right=1, num_wrong=0, max_steps=1, rewards="partial")
    env.reset(seed=0)
    _, r, terminated, truncated, info = env.step(0)
    assert terminated or truncated
    assert r == pytest.approx(reward) and info["reward_terms"]["hre"] == pytest.approx(reward)
    assert env.solved(env.transition(env.initial_state(0, 0), 0).grade) is solved
    outcome = ReasoningEnv([PUZZLE], model=lm, task="countdown", num_right=1, num_wrong=0, max_steps=1,
                           rewards="outcome")  # fmt: skip
    outcome.reset(seed=0)
    assert outcome.step(0)[1] == (1.0 if solved else -1.0)  # the binary preset is unchanged


def test_partial_rewards_on_a_task_without_partial_credit_is_a_config_error():
    with pytest.raises(ConfigError, match="rewards: must be a preset task arithmetic supports .*countdown"):
        EnvConfig(task="arithmetic", rewards="partial")
    lm = ScriptedLM({"": [("#### 5\n", False)]})
    problem = Problem(id="a", question="What is 2 + 3?", gold="5")
    with pytest.raises(ConfigError, match="task 'arithmetic' has none"):
        ReasoningEnv([problem], model=lm, task="arithmetic", num_right=1, num_wrong=0, rewards="partial")
    with pytest.raises(ConfigError, match="partial credit"):
        ReasoningEnv([problem], model=lm, task="gsm8k", num_right=1, num_wrong=0,
                     rewards=RewardConfig(credit="partial"))  # fmt: skip


# -- the sampling-temperature schedule ---------------------------------------------------------------


def test_schedule_is_linear_from_start_to_end_and_off_by_default():
    loop = LoopConfig(iterations=5, temperature_start=1.0, temperature_end=0.3)
    assert [sampling_temperature(loop, i) for i in (0, 2, 4)] == pytest.approx([1.0, 0.65, 0.3])
    assert sampling_temperature(replace(loop, iterations=1), 0) == 1.0
    assert sampling_temperature(LoopConfig(), 0) is None  # every existing preset: off
    assert run_config([]).loop.temperature_start is None
    assert run_config(["--preset", "gpu"]).loop.temperature_end is None
    bad_settings = (dict(temperature_start=1.0), dict(temperature_end=0.3), dict(temperature_start=0.0,
                                                                                 temperature_end=1.0))  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(ConfigError, match="temperature_"):
            LoopConfig(**bad)


class RecordingLM(ScriptedLM):
    def __init__(self, script):
        super().__init__(script)
        self.temperatures = []

    def generate(self, prompts, *, temperature=1.0, **kwargs):
        self.temperatures.append(temperature)
        return super().generate(prompts, temperature=temperature, **kwargs)


def test_env_samples_every_candidate_at_the_set_temperature():
    lm = RecordingLM({"": [("a\n", False), ("b\n", False), ("c\n", False)]})
    env = ReasoningEnv([PUZZLE], model=lm, task="countdown", num_right=1, num_wrong=1)
    state = env.initial_state(0, 0)
    env.candidates(state)
    assert lm.temperatures[-1] == [0.7, 1.0]  # the proposer's own right / wrong temperatures
    env.proposer.set_temperature(0.3)
    env.candidates(state)  # the cache was dropped: proposed again, at 0.3
    assert lm.temperatures[-1] == [0.3, 0.3]
    env.proposer.set_temperature(None)
    env.candidates(state)
    assert lm.temperatures[-1] == [0.7, 1.0]
    with pytest.raises(ValueError, match="> 0"):
        env.proposer.set_temperature(0.0)


# -- A*PO with advantage normalisation -------------------------------------------------------------


def test_apo_loss_on_group_normalised_advantages_by_hand():
    rewards, groups = torch.tensor([0.2, 0.6, -1.0, -1.0]), torch.tensor([0, 0, 1, 1])
    advantages = losses.group_advantages(rewards, groups, normalize_std=True)  # (r - mean) / std per group
    assert advantages.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)
    logp = torch.tensor([[-1.0, -3.0], [-1.0, -1.0], [-4.0, -4.0], [-5.0, -5.0]])
    loss, metrics = losses.apo_loss(logp, logp, advantages, torch.ones(4, 2), beta=0.1, aggregation="sequence")
    # per sequence -A * mean log pi: -(-1)(-2) = -2, -(1)(-1) = 1, 0, 0; KL to an equal reference 0
    assert float(loss) == pytest.approx((-2.0 + 1.0) / 4, abs=1e-5) and float(metrics["kl"]) == 0.0
    ref = logp - 1.0  # KL k3 per token: e^-1 + 1 - 1 = e^-1, beta * e^-1 added to every sequence's mean
    assert float(losses.apo_loss(logp, ref, advantages, torch.ones(4, 2), beta=0.1, aggregation="sequence")[0]) == (
        pytest.approx(-0.25 + 0.1 * torch.exp(torch.tensor(-1.0)).item(), abs=1e-5))  # fmt: skip


def apo_step_loss(tokenizer, rewards, **config) -> float:
    torch.manual_seed(0)
    student = Student.from_config(StudentConfig(model="tiny-llama"), model=tiny_llama(len(tokenizer)),
                                  tokenizer=tokenizer)  # fmt: skip
    samples = [Sample((5, 6, 7), (8, 9, 10), rewards[0], "a"), Sample((5, 6, 7), (12, 13), rewards[1], "a"),
               Sample((20, 21), (22, 23), rewards[2], "b"), Sample((20, 21), (25,), rewards[3], "b")]  # fmt: skip
    learner = Learner(student, LearnerConfig(loss="apo", value_coef=0.0, **config))
    return learner.step(samples)["loss"]


def test_apo_normalize_trains_on_advantages_not_raw_rewards(tokenizer):
    rewards, shifted = [0.2, 0.6, -1.0, 0.0], [0.9, 1.7, -0.5, 1.5]  # 2r + 0.5 and 1.5r + 1.5: same advantages
    normalized = dict(apo_normalize=True, normalize_std=True)
    assert apo_step_loss(tokenizer, rewards, **normalized) == pytest.approx(
        apo_step_loss(tokenizer, shifted, **normalized), rel=1e-5)  # the same up to the std's eps  # fmt: skip
    assert apo_step_loss(tokenizer, rewards) != pytest.approx(apo_step_loss(tokenizer, shifted), rel=1e-2)


# -- the countdown preset --------------------------------------------------------------------------


def test_countdown_preset_resolves_and_validates():
    config = run_config(["--preset", "countdown"])
    assert (config.env.task, config.env.data, config.env.rewards, config.env.num_right + config.env.num_wrong) == (
        "countdown", "3", "partial", 1)  # fmt: skip
    assert (config.learner.loss, config.learner.apo_normalize, config.learner.normalize_std) == ("apo", True, True)
    assert (config.loop.temperature_start, config.loop.temperature_end) == (1.0, 0.3)
    assert config.search.num_simulations == 1 and config.loop.group_size >= 2
    cpu = run_config([])  # the default preset is untouched
    assert (cpu.env.task, cpu.env.rewards, cpu.learner.loss, cpu.learner.apo_normalize) == (
        "arithmetic", "outcome", "grpo", False)  # fmt: skip
    with pytest.raises(ConfigError, match="group_size: must be >= 2 for apo_normalize"):
        replace(config, loop=replace(config.loop, group_size=1))


def test_countdown_preset_rejects_a_task_without_partial_credit(capsys):
    with pytest.raises(SystemExit):
        run_config(["--preset", "countdown", "--task", "arithmetic"])
    assert "--rewards: must be a preset task arithmetic supports" in capsys.readouterr().err


def test_one_countdown_iteration_writes_its_replay_and_the_temperature(tiny_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--preset", "countdown", "--model", str(tiny_dir), "--run-name", "cd", "--runs-dir", str(tmp_path),
            "--iterations", "1", "--num-examples", "2", "--group-size", "2", "--groups-per-step", "2",
            "--train-steps", "1", "--no-eval-base", "--eval-size", "2", "--eval-max-tokens", "8",
            "--chunk-tokens", "4", "--max-steps", "2", "--max-tokens", "8", "--no-progress"]  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "selfplay.py"), *args], capture_output=True,
                            text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "cd"
    episodes = [json.loads(line) for line in (run / "replay" / "iter-000000.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and all(e["solved"] is False for e in episodes)  # a random model solves nothing
    temperatures = []
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "charts/temperature" in acc.Tags()["scalars"]:
            temperatures += [(e.step, e.value) for e in acc.Scalars("charts/temperature")]
    assert temperatures == [(0, pytest.approx(1.0))]
    saved = json.loads((run / "config.json").read_text())
    assert (saved["learner"]["loss"], saved["env"]["rewards"], saved["loop"]["temperature_end"]) == (
        "apo", "partial", 0.3)  # fmt: skip


def test_countdown_preset_samples_own_steps_under_a_worked_example(tiny_lm):
    config = run_config(["--preset", "countdown"])
    assert (config.env.prompt, config.env.right_prompt) == ("example", "solve")  # on-policy A*PO samples
    env = ReasoningEnv.from_config(config.env, model=tiny_lm, data=[PUZZLE])
    prompt = tiny_lm.decode(env.solve_prompt(PUZZLE))
    question, answer = TASK_EXAMPLES["countdown"]
    assert prompt.index(TASK_SYSTEM_PROMPTS["countdown"]) < prompt.index(question) < prompt.index(answer)
    assert prompt.index(answer) < prompt.index(PUZZLE.question)  # the example is an earlier exchange
    assert env.proposer.right_prompt == "solve"
    with pytest.raises(ValueError, match="no worked example for task 'nope'"):
        system_prompt("nope", "example")
