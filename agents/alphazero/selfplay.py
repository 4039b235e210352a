"""One AlphaZero iteration's parts: self-play -> episodes -> learner samples -> learner steps.

Self-play runs ``group_size`` episodes on each of a batch of problems, all B = problems x group
states handed to the agent together: every move is one :meth:`~agents.policy.Agent.policy` call
over the live episodes (for MCTS, one batched search: B trees in lockstep), then an action per
episode sampled from its policy by a generator fixed by the state (:func:`~agents.policy.state_rng`).
The caller's ``rng`` only draws the episode seeds, so what an episode plays does not depend on the
other episodes of the batch: the batch split over Ray workers (:mod:`agents.distributed`) plays the
same episodes. Any agent works: :class:`~agents.mcts.MCTSAgent`,
:class:`~agents.policy.PriorAgent` (no search, the ablation) or
:class:`~agents.similarity.SimilarityAgent` (the seed system's ε-greedy similarity rule).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from agents.policy import Agent, state_rng
from agents.training.learner import DistillSample, Learner, Sample
from agents.training.replay import Episode, ReplayBuffer, StepRecord
from azgym.env import EnvState, ReasoningEnv
from azgym.rewards import outcome

logger = logging.getLogger(__name__)

ACTION_SALT = 0  # separates the move's per-state generator from other per-state draws


@dataclass
class SelfPlayStats:
    episodes: int
    moves: int
    seconds: float
    generated_tokens: int
    tree_nodes: list[float]
    tree_depths: list[float]
    simulations_per_s: list[float]
    visit_entropies: list[float]
    root_values: list[float]

    @classmethod
    def merged(cls, parts: list[SelfPlayStats], seconds: float) -> SelfPlayStats:
        """Several processes' or workers' statistics as one phase of ``seconds``: counts add up, lists join."""
        lists = ("tree_nodes", "tree_depths", "simulations_per_s", "visit_entropies", "root_values")
        return cls(
            episodes=sum(p.episodes for p in parts),
            moves=max((p.moves for p in parts), default=0),
            seconds=seconds,
            generated_tokens=sum(p.generated_tokens for p in parts),
            **{name: [x for p in parts for x in getattr(p, name)] for name in lists},
        )


def initial_states(
    env: ReasoningEnv, problem_indices: list[int], group_size: int, rng: np.random.Generator
) -> list[EnvState]:
    """``group_size`` starting states per problem (a problem's group together), each with its own episode
    seed drawn from ``rng`` in that order."""
    return [env.initial_state(p, int(rng.integers(0, 2**31 - 1))) for p in problem_indices for _ in range(group_size)]


def self_play(
    env: ReasoningEnv,
    agent: Agent,
    problem_indices: list[int],
    group_size: int,
    rng: np.random.Generator,
    *,
    iteration: int,
    weights_version: int,
    progress: bool = True,
) -> tuple[list[Episode], SelfPlayStats]:
    """Play ``group_size`` episodes per problem, all searched in lockstep; return them finished."""
    states = initial_states(env, problem_indices, group_size, rng)
    return play_episodes(env, agent, states, iteration=iteration, weights_version=weights_version, progress=progress)


def play_episodes(
    env: ReasoningEnv,
    agent: Agent,
    starts: list[EnvState],
    *,
    iteration: int,
    weights_version: int,
    progress: bool = True,
) -> tuple[list[Episode], SelfPlayStats]:
    """Play one episode from each starting state, all searched in lockstep; return them finished, in order."""
    states = list(starts)
    steps: list[list[StepRecord]] = [[] for _ in states]
    grades: list[dict | None] = [None] * len(states)
    live = list(range(len(states)))
    stats = SelfPlayStats(len(states), 0, 0.0, 0, [], [], [], [], [])
    start = time.perf_counter()
    bar = tqdm(total=len(states), desc=f"self-play {iteration}", unit="episode", disable=not progress, leave=False)
    while live:
        live_states = [states[i] for i in live]
        candidates = env.expand(live_states)
        k = env.action_space.n
        result = agent.policy(env, live_states)
        policy = result.probs
        visits = result.visits if result.visits is not None else np.zeros((len(live), k), np.int32)
        q_values = result.q_values if result.q_values is not None else np.full((len(live), k), np.nan)
        if result.stats:
            stats.tree_nodes.append(result.stats["num_nodes"])
            stats.tree_depths.append(result.stats["max_depth"])
            stats.simulations_per_s.append(result.stats["simulations_per_s"])
        if result.root_values is not None:
            stats.root_values.extend(result.root_values.tolist())
        for row, i in enumerate(live):
            p = policy[row] / policy[row].sum()
            stats.visit_entropies.append(float(-(p[p > 0] * np.log(p[p > 0])).sum()))
            action = -1 if result.actions is None else int(result.actions[row])  # the Gumbel root's own choice
            if action < 0:  # none: a draw from the policy
                action = int(state_rng(states[i], ACTION_SALT).choice(len(p), p=p))
            step = env.transition(states[i], action)
            cands = candidates[row]
            stats.generated_tokens += sum(len(c.token_ids) for c in cands)
            steps[i].append(
                StepRecord(
                    response_len=len(states[i].response_ids),
                    candidates=[list(c.token_ids) for c in cands],
                    labels=[c.label for c in cands],
                    priors=[round(c.prior, 6) for c in cands],
                    visits=visits[row, : len(cands)].tolist(),
                    q_values=[None if np.isnan(q) else float(q) for q in q_values[row, : len(cands)]],
                    action=action,
                    reward=step.reward,
                    policy=None if result.actions is None else [round(float(x), 6) for x in p[: len(cands)]],
                )
            )
            states[i] = step.state
            if step.grade is not None:
                env.proposer.credit(step.state)
                # solved: an exact solution, even when HRE pays partial credit
                grades[i] = {
                    "correct": step.grade.correct,
                    "format_ok": step.grade.format_ok,
                    "solved": step.judgement.solved,
                }
        stats.moves += 1
        done = [i for i in live if states[i].terminated or states[i].truncated]
        bar.update(len(done))
        live = [i for i in live if i not in set(done)]
    bar.close()
    stats.seconds = time.perf_counter() - start
    episodes = []
    for i, state in enumerate(states):  # every episode ended, so each has its grade
        problem = env.problem(state)
        episodes.append(
            Episode(
                problem_id=problem.id,
                question=problem.question,
                prompt_ids=env.solve_prompt(problem),
                response_ids=list(state.response_ids),
                episode_return=state.episode_return,
                correct=bool(grades[i]["correct"]),
                format_ok=bool(grades[i]["format_ok"]),
                solved=bool(grades[i]["solved"]),
                iteration=iteration,
                weights_version=weights_version,
                steps=steps[i],
                truncated=bool(state.truncated),
            )
        )
    return episodes, stats


def to_samples(episodes: list[Episode], eos_token_id: int, *, value_target: str = "outcome") -> list[Sample]:
    """Learner samples from episodes: the response (with an end-of-sequence token when the episode
    ended on an answer) rewarded by its return, and value targets at every move boundary.

    Tree episodes (:mod:`agents.alphazero.tree_play`) carry their per-token advantages and value
    targets; for the others ``value_target`` decides: ``"outcome"`` (the episode's outcome on the value scale of
    :mod:`azgym.rewards`, +1 solved, -1 otherwise, at every prefix) or ``"q"`` (the MCTS Q of the
    move taken, the outcome at the end).
    """
    samples = []
    for e in episodes:
        completion = tuple(e.response_ids) + ((eos_token_id,) if e.format_ok else ())
        final = outcome(e.solved)
        positions = [s.response_len for s in e.steps] + [len(e.response_ids)]
        advantages = None
        if e.token_advantages is not None:  # a tree episode: its own step advantages and Monte Carlo values
            advantages = tuple(e.token_advantages) + (e.token_advantages[-1],) * (len(completion) - len(e.response_ids))
            positions = [int(p) for p, _ in e.value_targets or []]
            targets = [float(t) for _, t in e.value_targets or []]
        elif value_target == "q":
            targets = [
                float(np.clip(s.q_values[s.action], -1, 1))
                if s.q_values and s.q_values[s.action] is not None
                else final
                for s in e.steps
            ] + [final]
        else:
            targets = [final] * len(positions)
        samples.append(
            Sample(
                prompt_ids=tuple(e.prompt_ids),
                completion_ids=completion,
                reward=e.episode_return,
                group=f"{e.iteration}:{e.problem_id}",
                value_positions=tuple(positions),
                value_targets=tuple(targets),
                truncated=e.truncated,
                advantages=advantages,
                old_logprobs=None if e.old_logprobs is None else tuple(e.old_logprobs),
                ref_logprobs=None if e.ref_logprobs is None else tuple(e.ref_logprobs),
                ref_version=e.ref_version,
            )
        )
    return samples


def keep_logprobs(episodes: list[Episode], computed: list, replay: ReplayBuffer | None = None) -> None:
    """Store what a learner step computed for its samples (:attr:`Learner.last_logprobs`, in the samples' order)
    with their episodes, and mark their shards for :meth:`ReplayBuffer.flush`."""
    for episode, fresh in zip(episodes, computed, strict=True):
        if fresh is None:
            continue
        if fresh.old is not None:
            episode.old_logprobs = list(fresh.old)
        if fresh.ref is not None:
            episode.ref_logprobs, episode.ref_version = list(fresh.ref), fresh.ref_version
        if replay is not None:
            replay.changed(episode)


def to_distill(episodes: list[Episode]) -> list[DistillSample]:
    """Distillation targets from every searched move with at least two candidates: the policy the step
    recorded (a Gumbel root's completed-Q improved policy), else its visit fractions (PUCT)."""
    out = []
    for e in episodes:
        for s in e.steps:
            total = sum(s.visits)
            if total > 0 and len(s.candidates) > 1:
                state = tuple(e.prompt_ids) + tuple(e.response_ids[: s.response_len])
                target = tuple(s.policy) if s.policy else tuple(v / total for v in s.visits)
                out.append(DistillSample(state, tuple(tuple(c) for c in s.candidates), target))
    return out


def train(
    learner: Learner,
    replay: ReplayBuffer,
    num_steps: int,
    groups_per_step: int,
    rng: np.random.Generator,
    eos_token_id: int,
    *,
    distill: bool = False,
    value_target: str = "outcome",
    dynamic_sampling: bool = False,
    on_step=None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """``num_steps`` learner steps, each on ``groups_per_step`` problem groups drawn from the replay. With
    ``dynamic_sampling`` only groups whose returns differ are drawn, and with none in the replay no step is taken
    (the history is empty). The log-probs a step computes are stored with the episodes (call
    ``replay.flush()`` to persist them before a checkpoint)."""
    history = []
    for _ in tqdm(range(num_steps), desc="train", unit="step", disable=not progress, leave=False):
        groups = replay.sample_groups(groups_per_step, rng, differing_only=dynamic_sampling)
        episodes = [e for g in groups for e in g]
        if not episodes and dynamic_sampling:
            break
        if not episodes:
            raise RuntimeError("the replay buffer is empty: run self-play before training")
        samples = to_samples(episodes, eos_token_id, value_target=value_target)
        metrics = learner.step(samples, to_distill(episodes) if distill else ())
        keep_logprobs(episodes, learner.last_logprobs, replay)
        history.append(metrics)
        if on_step is not None:
            on_step(learner.step_count, metrics, samples)
    return history
