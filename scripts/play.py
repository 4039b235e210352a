"""Play AZLLM-GSM8K-v0 episodes on a real model and report the grades.

    python scripts/play.py --data ../shared/data/gsm8k --split test --episodes 2

The policy searches with MCTS (``--policy mcts``, ``--simulations`` per move, leaves valued by a
value head on the model), follows the teacher's prior (``prior``), samples from it (``sample``) or
picks uniformly among the candidates (``random``). Each episode's text is printed as ``render()`` shows it,
and a summary line closes the run.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import azgym  # noqa: F401  (registers the environments)
from azgym.models import DEFAULT_MODEL


@dataclass
class PlayConfig:
    data: str = "openai/gsm8k"  # GSM8K path, folder or Hub id
    split: str = "test"
    model: str = DEFAULT_MODEL  # short name, local path or Hub id
    episodes: int = 1
    policy: str = "prior"  # mcts | prior | sample | random
    simulations: int = 8  # MCTS simulations per move
    seed: int = 0
    num_right: int = 2
    num_wrong: int = 2
    device: str = "cpu"


def choose(policy: str, info: dict, rng: np.random.Generator) -> int:
    if policy == "prior":
        return int(np.argmax(info["priors"]))
    if policy == "sample":
        return int(rng.choice(len(info["priors"]), p=info["priors"] / info["priors"].sum()))
    return int(rng.choice(np.flatnonzero(info["action_mask"])))


POLICIES = ("mcts", "prior", "sample", "random")


def parse_args() -> PlayConfig:
    defaults = PlayConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    config = PlayConfig(**vars(parser.parse_args()))
    if config.policy not in POLICIES:
        parser.error(f"--policy must be one of {', '.join(POLICIES)}, got {config.policy!r}")
    if config.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {config.episodes}")
    return config


def main() -> None:
    config = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = gym.make(
        "AZLLM-GSM8K-v0",
        data=config.data,
        split=config.split,
        model=config.model,
        num_right=config.num_right,
        num_wrong=config.num_wrong,
        device=config.device,
        render_mode="ansi",
    )
    rng = np.random.default_rng(config.seed)
    agent = None
    if config.policy == "mcts":
        from agents.mcts import MCTSAgent
        from agents.value import LMValueFunction

        agent = MCTSAgent(LMValueFunction(env.unwrapped.lm), num_simulations=config.simulations, seed=config.seed)
    correct = formatted = 0
    start = time.time()
    for episode in tqdm(range(config.episodes), desc="episodes"):
        _, info = env.reset(seed=config.seed + episode)
        done, total = False, 0.0
        while not done:
            action = agent.act(env) if agent else choose(config.policy, info, rng)
            _, reward, terminated, truncated, info = env.step(action)
            total += reward
            done = terminated or truncated
        tqdm.write(env.render())
        correct += info["grade"]["correct"]
        formatted += info["grade"]["format_ok"]
    took = time.time() - start
    print(
        f"{config.episodes} episodes, policy {config.policy}: {correct} correct, {formatted} with an answer "
        f"marker, {took:.0f} s"
    )


if __name__ == "__main__":
    main()
