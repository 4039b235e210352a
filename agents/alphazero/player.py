"""What plays self-play: the student, its backend, the env it proposes in and the agent, built from a
:class:`~agents.alphazero.config.RunConfig`, and the one call that plays episodes from their starting states.

The learner's process (:class:`~agents.alphazero.run.Run`) and every Ray self-play worker
(:mod:`agents.alphazero.ray_selfplay`) build theirs here, so both play alike. The starting states
(problem and episode seed) are drawn by the caller; everything random after that is seeded by the
states themselves, so the episodes of a batch do not depend on how it is split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from agents.alphazero.adaptive import AdaptiveSelfPlay, AdaptiveStats
from agents.alphazero.config import RunConfig
from agents.alphazero.selfplay import SelfPlayStats, initial_states, play_episodes
from agents.alphazero.tree_play import RolloutValue, TreeSelfPlay, TreeStats
from agents.mcts import MCTSAgent
from agents.policy import Agent, PriorAgent
from agents.similarity import SimilarityAgent
from agents.student import LMValueFunction, Student
from agents.training.checkpoint import build_student
from agents.training.replay import Episode
from azgym.env import EnvState, ReasoningEnv
from azgym.lm.hf import HFBackend


def make_agent(config: RunConfig, student: Student, lm: HFBackend) -> Agent | TreeSelfPlay | AdaptiveSelfPlay:
    """The self-play agent the config asks for: adaptive (the default: cheap groups, the search only on all-fail
    groups), MCTS per move, tree self-play, no search (``num_simulations`` 1, the ablation) or similarity."""
    loop = config.loop
    if loop.agent == "similarity":
        return SimilarityAgent(lm, epsilon=loop.epsilon, seed=loop.seed)
    value_fn = LMValueFunction(lm, student.value_head)
    if loop.selfplay == "adaptive":
        search = replace(
            config.search, num_simulations=loop.rescue_simulations, leaves_per_round=loop.rescue_leaves_per_round
        )
        rescue = MCTSAgent(value_fn, config=search, seed=loop.seed, reuse_tree=False)
        return AdaptiveSelfPlay(
            rescue,
            group_size=loop.group_size,
            rescue_budget=loop.rescue_budget,
            solution_cache=loop.solution_cache,
            skip_solved=loop.skip_solved,
            seed=loop.seed,
        )
    if not config.search.searches:
        return PriorAgent()
    if loop.selfplay == "tree":
        return TreeSelfPlay(
            lm,
            config.search,
            value_fn=value_fn,
            value_weight=loop.value_weight,
            temperature=loop.rollout_temperature,
            seed=loop.seed,
            branch_entropy=loop.branch_entropy,
        )
    if loop.leaf_value == "rollout":  # Monte Carlo leaves (VinePPO): graded against the gold answer, training only
        value_fn = RolloutValue(
            lm,
            value_fn=value_fn,
            value_weight=loop.value_weight,
            temperature=loop.rollout_temperature,
            keep_endings=False,
        )
    return MCTSAgent(value_fn, config=config.search, seed=loop.seed, reuse_tree=False)


@dataclass
class Player:
    """The student (with its value head), its backend, the training env and the self-play agent."""

    config: RunConfig
    student: Student
    lm: HFBackend
    env: ReasoningEnv
    agent: Agent | TreeSelfPlay | AdaptiveSelfPlay

    @classmethod
    def from_config(cls, config: RunConfig) -> Player:
        torch.manual_seed(config.loop.seed)
        student = build_student(config.student)
        lm = student.backend(name=config.student.model)  # the student proposes as this teacher
        env = ReasoningEnv.from_config(config.env, model=lm, split="train", device=config.student.device)
        return cls(config, student, lm, env, make_agent(config, student, lm))

    @property
    def group_size(self) -> int:
        """Starting states per problem: the GRPO group, or one tree's root."""
        return 1 if isinstance(self.agent, TreeSelfPlay) else self.config.loop.group_size

    def draw_problems(self, size: int, iteration: int, rng: np.random.Generator) -> list[int]:
        """The iteration's ``size`` problems, drawn without replacement from ``rng`` (adaptive self-play leaves
        out the problems on its skip list)."""
        if isinstance(self.agent, AdaptiveSelfPlay):
            return self.agent.draw_problems(len(self.env.problems), size, iteration, rng)
        return rng.choice(len(self.env.problems), size=size, replace=False).tolist()

    def starts(self, problem_indices: list[int], rng: np.random.Generator) -> list[EnvState]:
        """The starting states of ``problem_indices`` (``group_size`` each, a problem's together), episode
        seeds drawn from ``rng`` in order."""
        return initial_states(self.env, problem_indices, self.group_size, rng)

    def play(
        self, starts: list[EnvState], *, iteration: int, weights_version: int, progress: bool = False
    ) -> tuple[list[Episode], SelfPlayStats, TreeStats | AdaptiveStats | None]:
        """Self-play from ``starts``: the episodes (in the order of their starts), the statistics, and the
        tree statistics of tree self-play or the rescue statistics of adaptive self-play (None for move-by-move
        play)."""
        if isinstance(self.agent, AdaptiveSelfPlay):
            return self.agent.play(
                self.env, starts, iteration=iteration, weights_version=weights_version, progress=progress
            )
        if isinstance(self.agent, TreeSelfPlay):
            episodes, stats = self.agent.play_roots(
                self.env, starts, iteration=iteration, weights_version=weights_version
            )
            return episodes, stats, self.agent.last_tree_stats
        rollouts = getattr(self.agent, "value_fn", None)
        rolled = rollouts.generated_tokens if isinstance(rollouts, RolloutValue) else 0
        episodes, stats = play_episodes(
            self.env, self.agent, starts, iteration=iteration, weights_version=weights_version, progress=progress
        )
        if isinstance(rollouts, RolloutValue):  # the leaves' rollouts are generated tokens too
            stats.generated_tokens += rollouts.generated_tokens - rolled
        return episodes, stats, None
