"""MCTSAgent: search-guided action selection for a ReasoningEnv."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.mcts.env_model import EnvSearchModel
from agents.mcts.search import MCTS, SearchConfig, SearchResult
from agents.mcts.tree import ROOT_INDEX
from agents.policy import Policy, ValueFn, base_env, constant_value, sample_action
from azgym.env import EnvState


class MCTSAgent:
    """Plays a :class:`~azgym.env.ReasoningEnv` by PUCT search (B trees in lockstep).

    Args:
        value_fn: leaf evaluator ``(env, states) -> values``; default: 0 for every state.
        config: a :class:`~agents.mcts.search.SearchConfig`; ``**settings`` replace its fields
            (``num_simulations``, ``c_puct``, ``temperature``, ``dirichlet_fraction``, ...).
        reuse_tree: :meth:`act` keeps the subtree under the chosen action for the next move.
        seed: seeds the root noise and the sampling of actions from the visit policy.
    """

    def __init__(self, value_fn: ValueFn | None = None, *, config: SearchConfig | None = None,
                 reuse_tree: bool = True, seed: int | None = None, **settings):  # fmt: skip
        self.mcts = MCTS(config, **settings)
        self.value_fn = value_fn or constant_value(0.0)
        self.reuse_tree = reuse_tree
        self.rng = np.random.default_rng(seed)
        self.last_result: SearchResult | None = None
        self._next_root: tuple[SearchResult, int] | None = None  # (search, node) the env should be at next

    def search(self, env, states: Sequence[EnvState]) -> SearchResult:
        """Search from B states of ``env`` at once (B trees in lockstep)."""
        return self.mcts.search(EnvSearchModel(base_env(env), self.value_fn), list(states), self.rng)

    def policy(self, env, states: Sequence[EnvState]) -> Policy:
        """The visit policy of a fresh search from each state, with the search statistics."""
        result = self.search(env, states)
        return Policy(result.policy, result.visits, result.q_values, result.root_value, result.stats())

    def act(self, env) -> int:
        """Search from ``env``'s current state (reusing the last move's subtree) and return the action."""
        base = base_env(env)
        state = base.get_state()
        if state.terminated or state.truncated:
            raise ValueError("the episode has ended; reset the environment before asking for an action")
        reuse = None
        if self.reuse_tree and self._next_root is not None:
            previous, node = self._next_root
            if previous.states[0, node] == state:
                reuse = (previous.tree, previous.states, np.array([node]))
        result = self.mcts.search(EnvSearchModel(base, self.value_fn), [state], self.rng, reuse=reuse)
        action = sample_action(result.policy[0], self.rng)
        self.last_result = result
        child = int(result.tree.children_index[0, ROOT_INDEX, action])
        self._next_root = (result, child) if child >= 0 else None
        return action
