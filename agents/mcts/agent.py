"""MCTSAgent: search-guided action selection for a ReasoningEnv."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.mcts.env_model import EnvSearchModel
from agents.mcts.search import MCTS, SearchResult
from agents.mcts.tree import ROOT_INDEX
from agents.value import ValueFn, constant_value
from azgym.env import EnvState, ReasoningEnv


class MCTSAgent:
    """Plays a :class:`~azgym.env.ReasoningEnv` by PUCT search from its current state.

    Args:
        value_fn: leaf evaluator ``(env, states) -> values``; default: 0 for every state.
        reuse_tree: keep the subtree under the chosen action for the next move.
        seed: seeds the root noise and the sampling of actions from the visit policy.
        **search_kwargs: :class:`~agents.mcts.search.MCTS` settings (``num_simulations``,
            ``c_puct``, ``temperature``, ``dirichlet_fraction``, ...).
    """

    def __init__(self, value_fn: ValueFn | None = None, *, reuse_tree: bool = True, seed: int | None = None,
                 **search_kwargs):  # fmt: skip
        self.mcts = MCTS(**search_kwargs)
        self.value_fn = value_fn or constant_value(0.0)
        self.reuse_tree = reuse_tree
        self.rng = np.random.default_rng(seed)
        self.last_result: SearchResult | None = None
        self._next_root: tuple[SearchResult, int] | None = None  # (search, node) the env should be at next

    def search(self, env, states: Sequence[EnvState]) -> SearchResult:
        """Search from B states of ``env`` at once (B trees in lockstep)."""
        base = _base(env)
        return self.mcts.search(EnvSearchModel(base, self.value_fn), list(states), self.rng)

    def act(self, env) -> int:
        """Search from ``env``'s current state and return the action to take."""
        base = _base(env)
        state = base.get_state()
        if state.terminated or state.truncated:
            raise ValueError("the episode has ended; reset the environment before asking for an action")
        reuse = None
        if self.reuse_tree and self._next_root is not None:
            previous, node = self._next_root
            if previous.states[0, node] == state:
                reuse = (previous.tree, previous.states, np.array([node]))
        result = self.mcts.search(EnvSearchModel(base, self.value_fn), [state], self.rng, reuse=reuse)
        policy = result.policy[0]
        if policy.sum() <= 0:
            raise RuntimeError("the search found no valid action in a live state: the proposer returned no candidates")
        action = int(self.rng.choice(len(policy), p=policy / policy.sum()))
        self.last_result = result
        child = int(result.tree.children_index[0, ROOT_INDEX, action])
        self._next_root = (result, child) if child >= 0 else None
        return action


def _base(env) -> ReasoningEnv:
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, ReasoningEnv):
        raise TypeError(f"MCTSAgent plays a ReasoningEnv (AZLLM-*), got {type(base).__name__}")
    return base
