"""The one interface every agent offers, and the simplest agent: sampling from the teachers' priors.

An agent is anything with ``policy(env, states) -> Policy``: for B states of a
:class:`~azgym.env.ReasoningEnv`, a distribution over the K action slots of each (zero on empty
slots) and whatever search statistics it gathered. Self-play only ever calls this, so a new agent
needs no branch anywhere else.

A value function is a callable ``value_fn(env, states) -> np.ndarray`` ([M] float64 in [-1, 1], the
value scale of :mod:`azgym.rewards`), called once per search round on every new leaf together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from azgym.env import EnvState, ReasoningEnv

ValueFn = Callable[[ReasoningEnv, Sequence[EnvState]], np.ndarray]


@dataclass
class Policy:
    """What an agent says about B states."""

    probs: np.ndarray  # [B, K] float64, each row a distribution over the valid slots
    visits: np.ndarray | None = None  # [B, K] int32 root visit counts (searching agents)
    q_values: np.ndarray | None = None  # [B, K] float64 Q(root, a), NaN for actions never tried
    root_values: np.ndarray | None = None  # [B] float64 mean backed-up return at each root
    stats: dict[str, float] = field(default_factory=dict)  # scalars worth logging (tree size, ...)
    actions: np.ndarray | None = None  # [B] int the search's own choice (Gumbel: the selected action, -1: none)


class Agent(Protocol):
    def policy(self, env: ReasoningEnv, states: Sequence[EnvState]) -> Policy: ...


def base_env(env) -> ReasoningEnv:
    """The :class:`~azgym.env.ReasoningEnv` under any Gymnasium wrappers."""
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, ReasoningEnv):
        raise TypeError(f"this agent plays a ReasoningEnv (AZLLM-*), got {type(base).__name__}")
    return base


def sample_action(policy_row: np.ndarray, rng: np.random.Generator) -> int:
    """One action drawn from a row of :attr:`Policy.probs`."""
    total = policy_row.sum()
    if not total > 0:
        raise RuntimeError("the agent found no valid action in a live state: the proposer returned no candidates")
    return int(rng.choice(len(policy_row), p=policy_row / total))


def state_rng(state: EnvState, *salt: int) -> np.random.Generator:
    """A generator fixed by ``state`` (its problem, episode seed and depth) and ``salt`` (non-negative ints).

    What it draws does not depend on the other states of a batch, so a batch split over processes (Ray
    self-play workers) plays the same episodes as the whole batch in one process, as the candidates
    (seeded per state by the proposer) and the rollouts already do.

    >>> from azgym.state import EnvState
    >>> a, b = EnvState(3, (), 0, seed=7), EnvState(3, (5,), 1, seed=7)
    >>> state_rng(a, 1).random() == state_rng(a, 1).random() != state_rng(b, 1).random()
    True
    """
    return np.random.default_rng([*salt, state.problem_index, state.seed, state.depth])


def base_seed(seed: int | None) -> int:
    """An agent's seed as a non-negative int for :func:`state_rng` (None: a fresh random one)."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1)


def prior_probs(env: ReasoningEnv, states: Sequence[EnvState]) -> np.ndarray:
    """[B, K] the teachers' priors of each state's candidates (zero on empty slots)."""
    out = np.zeros((len(states), env.action_space.n))
    for row, candidates in enumerate(env.expand(states)):
        out[row, : len(candidates)] = [c.prior for c in candidates]
    return out


class PriorAgent:
    """No search: the teachers' priors are the policy (the ``--simulations 1`` ablation)."""

    def policy(self, env: ReasoningEnv, states: Sequence[EnvState]) -> Policy:
        return Policy(prior_probs(base_env(env), states))


def constant_value(value: float = 0.0) -> ValueFn:
    """Every state is worth ``value``: search then rests on the priors and the true terminal rewards."""
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"a value must lie in [-1, 1], got {value}")

    def value_fn(env: ReasoningEnv, states: Sequence[EnvState]) -> np.ndarray:
        return np.full(len(states), value, dtype=np.float64)

    return value_fn
