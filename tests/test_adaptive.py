"""Adaptive self-play: cheap groups, the rescue search on all-fail groups, the solution cache, the skip list,
dynamic sampling in the learner, and the flags' one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_learner import make_student
from test_mcts_agent import PROBLEM, SCRIPT

from agents.alphazero.adaptive import AdaptiveSelfPlay, returns_equal
from agents.alphazero.selfplay import initial_states, train
from agents.mcts import MCTSAgent
from agents.policy import Policy, constant_value
from agents.training.learner import Learner, LearnerConfig
from agents.training.replay import ReplayBuffer
from azgym.env import ReasoningEnv
from azgym.rewards import LOSS, WIN
from azgym.tasks import Problem
from helpers import REPO, ScriptedLM

GROUP = 4


class PickAgent:
    """A cheap player that always takes the candidate whose text contains ``digit`` (else the first)."""

    def __init__(self, digit: str):
        self.digit = digit

    def policy(self, env, states):
        probs = np.zeros((len(states), env.action_space.n))
        for row, candidates in enumerate(env.expand(states)):
            pick = [i for i, c in enumerate(candidates) if self.digit in c.text] or [0]
            probs[row, pick[0]] = 1.0
        return Policy(probs)


def scripted(problems=(PROBLEM,)):
    """2 + 3 with a right and a wrong step at each state (the MCTS agent tests' script)."""
    return ReasoningEnv(list(problems), model=ScriptedLM(SCRIPT), num_right=1, num_wrong=1, rewards="outcome")


def adaptive(cheap_digit="6", rescue_budget=200, **settings):
    rescue = MCTSAgent(constant_value(0.0), num_simulations=8, dirichlet_fraction=0.0, seed=0, reuse_tree=False)
    settings = {"solution_cache": 4, "skip_solved": 3, **settings}
    return AdaptiveSelfPlay(rescue, group_size=GROUP, rescue_budget=rescue_budget, cheap=PickAgent(cheap_digit),
                            **settings)  # fmt: skip


def play(player, env, iteration=0, problems=(0,)):
    starts = initial_states(env, list(problems), GROUP, np.random.default_rng(iteration))
    return player.play(env, starts, iteration=iteration, weights_version=iteration)


def test_an_all_fail_group_gets_the_searched_path_and_a_gradient(tokenizer):
    env, player = scripted(), adaptive()
    episodes, stats, info = play(player, env)
    assert [e.source for e in episodes] == ["sampled"] * (GROUP - 1) + ["search"]
    assert not any(e.solved for e in episodes[:-1])  # every cheap episode took the wrong step
    found = episodes[-1]
    assert found.solved and env.lm.decode(found.response_ids) == "2 + 3 = 5\n#### 5\n"
    assert [s.action for s in found.steps] == [0, 0] and found.steps[1].response_len == len("2 + 3 = 5\n")
    assert (info.all_fail_before, info.all_fail_after, info.rescued_by_search, info.rescued_share) == (1, 0, 1, 1)
    assert info.rescue_simulations > 0 and info.rescue_tokens > 0 and stats.generated_tokens > info.rescue_tokens

    # the dead group is now a gradient: the found path's advantage is (WIN - LOSS)(G - 1)/G, the others' -(WIN - LOSS)/G
    replay = ReplayBuffer("unused", persist=False)
    replay.add(0, episodes)
    seen = []
    learner = Learner(make_student(tokenizer), LearnerConfig(kl_coef=0.0))
    history = train(learner, replay, 1, 1, np.random.default_rng(0), env.lm.eos_token_id, dynamic_sampling=True,
                    on_step=lambda step, metrics, samples: seen.extend(samples), progress=False)  # fmt: skip
    assert len(history) == 1 and [s.reward for s in seen] == [LOSS] * (GROUP - 1) + [WIN]
    assert seen[-1].completion_ids[: len(found.response_ids)] == tuple(found.response_ids)
    assert history[0]["advantage_abs"] == pytest.approx(((WIN - LOSS) * (GROUP - 1) / GROUP + (GROUP - 1) *
                                                         (WIN - LOSS) / GROUP) / GROUP)  # fmt: skip


def test_without_search_budget_a_dead_group_stays_dead_and_dynamic_sampling_skips_the_step(tokenizer):
    env = scripted()
    episodes, _, info = play(adaptive(rescue_budget=0), env)
    assert returns_equal(episodes) and info.rescued_share == 0 and info.rescue_simulations == 0
    replay = ReplayBuffer("unused", persist=False)
    replay.add(0, episodes)
    learner = Learner(make_student(tokenizer))
    assert train(learner, replay, 3, 1, np.random.default_rng(0), 0, dynamic_sampling=True, progress=False) == []
    assert learner.step_count == 0
    assert len(train(learner, replay, 1, 1, np.random.default_rng(0), 0, progress=False)) == 1  # off: it steps


def test_the_solution_cache_rescues_a_group_that_fails_again_and_survives_a_resume(tmp_path):
    env, player = scripted(), adaptive()
    play(player, env, iteration=0)
    assert len(player.cache) == 1
    path = tmp_path / "trainer.pt"
    torch.save({"extra": {"adaptive": player.state_dict()}}, path)  # as a checkpoint holds it

    resumed = adaptive(rescue_budget=0)  # no search: only the cache can rescue
    resumed.load_state_dict(torch.load(path, weights_only=False)["extra"]["adaptive"])
    episodes, _, info = play(resumed, scripted(), iteration=5)
    assert episodes[-1].source == "cache" and episodes[-1].solved and episodes[-1].iteration == 5
    assert (info.rescued_by_cache, info.rescued_by_search, info.all_fail_after) == (1, 0, 0)
    assert not returns_equal(episodes)


def test_all_pass_groups_put_their_problem_on_the_skip_list():
    problems = [Problem(id=f"p{i}", question=PROBLEM.question, gold=PROBLEM.gold) for i in range(3)]
    env, player = scripted(problems), adaptive(cheap_digit="5", skip_solved=3)
    episodes, _, info = play(player, env, iteration=0, problems=(0,))
    assert all(e.solved for e in episodes) and info.all_pass_before == 1 and info.skipped_problems == 1
    assert info.searched_problems == 0 and len(player.cache) == 1  # nothing to rescue; its solution is kept
    rng = np.random.default_rng(0)
    for iteration in (1, 2, 3):  # skipped for skip_solved iterations
        assert all(0 not in player.draw_problems(3, 2, iteration, rng) for _ in range(20))
    assert any(0 in player.draw_problems(3, 2, 4, rng) for _ in range(20))
    assert sorted(player.draw_problems(3, 3, 1, rng)) == [0, 1, 2]  # too few left: every problem is eligible
    state = json.loads(json.dumps(player.state_dict()))  # plain JSON-able state
    again = adaptive()
    again.load_state_dict(state)
    assert again.skip_until == player.skip_until and len(again.cache) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--rescue-budget", "-5"],
            "--rescue-budget: must be 0 or >= --rescue-simulations (8: one problem's tree), got -5",
        ),
        (["--rescue-simulations", "1"], "--rescue-simulations: must be >= 2"),
        (["--rescue-budget", "4"], "--rescue-budget: must be 0 or >= --rescue-simulations (8"),
        (["--rescue-leaves-per-round", "0"], "--rescue-leaves-per-round: must be >= 1, got 0"),
        (["--workers", "2"], "0 under --selfplay adaptive"),
    ],
)
def test_bad_adaptive_flags_are_one_line_errors(flags, message, tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(tmp_path), "--selfplay",
           "adaptive", *flags]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    last = done.stderr.strip().splitlines()[-1]  # argparse's usage, then one line naming the flag and the rule
    assert done.returncode != 0 and message in last and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_default_run_is_adaptive_and_its_state_survives_a_resume(tiny_dir, tmp_path):
    """The script's default self-play on a tiny model: no episode solves, so every group is all-fail, the rescue
    search runs, and with no group whose returns differ the learner takes no step (dynamic sampling)."""
    from test_selfplay_script import TINY, scalar_tags, selfplay

    flags = [f for f in TINY if f not in ("--selfplay", "moves")]
    first = selfplay(["--model", str(tiny_dir), "--run-name", "adaptive", *flags], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "adaptive"
    assert json.loads((run / "config.json").read_text())["loop"]["selfplay"] == "adaptive"
    assert {"adaptive/all_fail_before", "adaptive/rescue_simulations", "adaptive/dead_after",
            "perf/learner_steps"} <= scalar_tags(run)  # fmt: skip
    assert "no learner step" in first.stderr
    rows = [json.loads(line) for line in (run / "adaptive.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["all_fail_before"] == 1.0 and rows[0]["rescue_simulations"] > 0
    saved = torch.load(next((run / "checkpoints").glob("step-*")) / "trainer.pt", weights_only=False)["extra"]
    assert set(saved["adaptive"]) == {"solutions", "skip_until"}

    longer = list(flags)
    longer[longer.index("--iterations") + 1] = "2"
    again = selfplay(["--model", str(tiny_dir), "--run-name", "adaptive", "--resume", *longer], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing at iteration 1" in again.stderr
    assert len((run / "adaptive.jsonl").read_text().splitlines()) == 2
