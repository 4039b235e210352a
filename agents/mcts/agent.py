"""MCTSAgent: search-guided action selection for a ReasoningEnv."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.mcts.env_model import EnvSearchModel
from agents.mcts.search import MCTS, SearchConfig, SearchResult
from agents.mcts.tree import ROOT_INDEX
from agents.policy import Policy, ValueFn, base_env, base_seed, constant_value, state_rng
from azgym.env import EnvState

NOISE_SALT = 1  # separates the root noise's per-state generator from other per-state draws


class MCTSAgent:
    """Plays a :class:`~azgym.env.ReasoningEnv` by PUCT or Gumbel MuZero search (B trees in lockstep).

    Under ``root="gumbel"`` :meth:`policy` returns the improved policy softmax(logits + sigma(completed Q))
    as ``probs`` (the policy target; a draw from it is a fresh Gumbel-max sample) and the search's own
    selected action as ``actions``; :meth:`act` plays the selected action (deterministic given the
    search's Gumbel noise, as in mctx) and never reuses the subtree (Sequential Halving starts afresh).

    Args:
        value_fn: leaf evaluator ``(env, states) -> values``; default: 0 for every state.
        config: a :class:`~agents.mcts.search.SearchConfig`; ``**settings`` replace its fields
            (``num_simulations``, ``c_puct``, ``temperature``, ``dirichlet_fraction``, ...).
        reuse_tree: :meth:`act` keeps the subtree under the chosen action for the next move (PUCT only).
        seed: seeds the root noise (Dirichlet or Gumbel) and :meth:`act`'s sampling of actions from the
            visit policy. A root's noise is drawn from a generator fixed by the seed and the root state
            (:func:`~agents.policy.state_rng`), so a search does not depend on the other states of its batch.
    """

    def __init__(
        self,
        value_fn: ValueFn | None = None,
        *,
        config: SearchConfig | None = None,
        reuse_tree: bool = True,
        seed: int | None = None,
        **settings,
    ):
        self.mcts = MCTS(config, **settings)
        self.value_fn = value_fn or constant_value(0.0)
        self.reuse_tree = reuse_tree
        self.rng = np.random.default_rng(seed)
        self.seed = base_seed(seed)
        self.last_result: SearchResult | None = None
        self._next_root: tuple[SearchResult, int] | None = None  # (search, node) the env should be at next

    def search(self, env, states: Sequence[EnvState]) -> SearchResult:
        """Search from B states of ``env`` at once (B trees in lockstep)."""
        return self.mcts.search(EnvSearchModel(base_env(env), self.value_fn), list(states), self._noise(states))

    def policy(self, env, states: Sequence[EnvState]) -> Policy:
        """A fresh search's policy from each state (visits, or Gumbel's improved policy), with its statistics."""
        result = self.search(env, states)
        return Policy(result.policy, result.visits, result.q_values, result.root_value, result.stats(), result.action)

    def act(self, env) -> int:
        """Search from ``env``'s current state (reusing the last move's subtree) and return the action."""
        base = base_env(env)
        state = base.get_state()
        if state.terminated or state.truncated:
            raise ValueError("the episode has ended; reset the environment before asking for an action")
        reuse = None
        if self.reuse_tree and self.mcts.config.root == "puct" and self._next_root is not None:
            previous, node = self._next_root
            if previous.states[0, node] == state:
                reuse = (previous.tree, previous.states, np.array([node]))
        result = self.mcts.search(EnvSearchModel(base, self.value_fn), [state], self._noise([state]), reuse=reuse)
        action = int(result.choose(self.rng)[0])
        if action < 0:
            raise RuntimeError("the agent found no valid action in a live state: the proposer returned no candidates")
        self.last_result = result
        child = int(result.tree.children_index[0, ROOT_INDEX, action])
        self._next_root = (result, child) if child >= 0 else None
        return action

    def _noise(self, states: Sequence[EnvState]) -> list[np.random.Generator]:
        return [state_rng(s, NOISE_SALT, self.seed) for s in states]
