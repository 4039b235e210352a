"""Play AZLLM-* episodes on a real model and report the grades.

    python scripts/play.py --data ../shared/data/gsm8k --split test --episodes 2
    python scripts/play.py --policy mcts --simulations 8 --task arithmetic

The policy searches with MCTS (``--policy mcts``, ``--simulations`` per move or
``NUM_MCTS_ITERATIONS``, leaves valued by an untrained value head on the model), follows the
teacher's prior (``prior``), samples from it (``sample``) or picks uniformly among the candidates
(``random``). Each episode's text is printed as ``render()`` shows it, and a summary line closes
the run. The env and search flags are the self-play run's (same names and defaults), except that
the task defaults to GSM8K.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from agents.alphazero.config import cpu_preset
from agents.mcts import MCTSAgent, SearchConfig
from azgym.cli import parse_config, run_script
from azgym.config import EnvConfig, check_fields, option, raise_problems
from azgym.env import ReasoningEnv
from azgym.lm.registry import DEFAULT_MODEL

POLICIES = ("mcts", "prior", "sample", "random")


@dataclass(frozen=True)
class PlayOptions:
    """Which episodes, on which model, chosen how."""

    split: str = option("test", "split of the task's data")
    model: str = option(DEFAULT_MODEL, "teacher and scoring model: a short name, local path or Hub id")
    device: str = option("cpu", "device of the model")
    episodes: int = option(1, "episodes to play")
    policy: str = option("prior", "mcts (search), prior (the most likely candidate), sample (from the priors) "
                         "or random", choices=POLICIES)  # fmt: skip
    seed: int = option(0, "seeds the episodes and the policy")

    def __post_init__(self):
        raise_problems(self, check_fields(self, {"episodes": (self.episodes >= 1, ">= 1")}))


@dataclass(frozen=True)
class PlayConfig:
    """Play AZLLM-* episodes on a real model and report the grades."""

    env: EnvConfig = field(default_factory=lambda: replace(cpu_preset().env, task="gsm8k", num_wrong=2,
                                                           chunk_tokens=48, max_steps=12, max_tokens=256))  # fmt: skip
    search: SearchConfig = field(default_factory=lambda: cpu_preset().search)
    play: PlayOptions = field(default_factory=PlayOptions)


def choose(policy: str, info: dict, rng: np.random.Generator) -> int:
    if policy == "prior":
        return int(np.argmax(info["priors"]))
    if policy == "sample":
        return int(rng.choice(len(info["priors"]), p=info["priors"] / info["priors"].sum()))
    return int(rng.choice(np.flatnonzero(info["action_mask"])))


def main(argv=None) -> None:
    config = parse_config(PlayConfig, argv)
    options = config.play
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = ReasoningEnv.from_config(config.env, model=options.model, split=options.split, device=options.device,
                                   render_mode="ansi")  # fmt: skip
    rng = np.random.default_rng(options.seed)
    agent = None
    if options.policy == "mcts":
        from agents.student import LMValueFunction

        agent = MCTSAgent(LMValueFunction(env.lm), config=config.search, seed=options.seed)
    correct = formatted = 0
    start = time.time()
    for episode in tqdm(range(options.episodes), desc="episodes"):
        _, info = env.reset(seed=options.seed + episode)
        done = False
        while not done:
            action = agent.act(env) if agent else choose(options.policy, info, rng)
            _, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        tqdm.write(env.render())
        correct += info["grade"]["correct"]
        formatted += info["grade"]["format_ok"]
    print(f"{options.episodes} episodes, policy {options.policy}: {correct} correct, {formatted} with an answer "
          f"marker, {time.time() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_script("play.py", main))
