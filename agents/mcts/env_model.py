"""The bridge between the search and a ReasoningEnv: batched transitions, proposals and values."""

from __future__ import annotations

import numpy as np

from agents.mcts.search import Expansion, Step
from agents.policy import ValueFn
from azgym.env import ReasoningEnv


class EnvSearchModel:
    """A :class:`~agents.mcts.search.SearchModel` over :class:`~azgym.env.EnvState` s.

    ``step`` applies each (state, action) with ``env.transition`` (no model call: the parent's
    candidates are cached), then proposes for all the children in one ``env.expand`` call and values
    the live ones in one ``value_fn`` call. A child that ends the episode (an answer, end of
    sequence, or a length limit) is terminal.

    Self-play (``terminal_value_fn=None``): the edge rewards are the env's, so a terminal edge pays the
    true reward, graded against the gold answer. Blind (a ``terminal_value_fn``, for evaluation): the
    transition's reward and grade are never read; a terminal edge pays ``terminal_value_fn(env, states)``
    (clipped to the value scale, e.g. the value head or :class:`~agents.alphazero.tree_eval.AnswerAgreement`)
    and every other edge 0, so nothing the search sees depends on the gold answer.

    Where the tree branches (``branch_entropy``): 0 offers every candidate at every node; above 0, a
    node whose priors' normalised entropy ``H(p) / log K`` is below it offers only its most likely
    candidate (prior 1), so the search branches only where the student is unsure which step comes
    next (TreeRL's entropy-guided branching, at step boundaries). ``nodes`` and ``branching`` count the
    live nodes evaluated and those that kept every candidate.
    """

    state_dtype = object

    def __init__(
        self,
        env: ReasoningEnv,
        value_fn: ValueFn,
        *,
        terminal_value_fn: ValueFn | None = None,
        branch_entropy: float = 0.0,
    ):
        if not 0.0 <= branch_entropy <= 1.0:
            raise ValueError(f"branch_entropy must lie in [0, 1] (a normalised entropy), got {branch_entropy}")
        self.env = env
        self.value_fn = value_fn
        self.terminal_value_fn = terminal_value_fn
        self.branch_entropy = branch_entropy
        self.num_actions = int(env.action_space.n)
        self.nodes = self.branching = 0

    def evaluate(self, states) -> Expansion:
        states = list(states)
        m, k = len(states), self.num_actions
        prior = np.zeros((m, k), np.float32)
        valid = np.zeros((m, k), np.bool_)
        for i, candidates in enumerate(self.env.expand(states)):
            prior[i, : len(candidates)] = [c.prior for c in candidates]
            valid[i, : len(candidates)] = True
        terminal = np.array([s.terminated or s.truncated for s in states], dtype=np.bool_)
        narrow = np.zeros(m, np.bool_)
        if self.branch_entropy > 0:  # (0, the default: nothing is narrowed, and move-by-move search pays nothing)
            narrow = normalised_entropy(prior, valid) < self.branch_entropy
            best = np.argmax(np.where(valid, prior, -1.0), axis=1)
            for i in np.flatnonzero(narrow):
                prior[i], valid[i] = 0.0, False
                prior[i, best[i]], valid[i, best[i]] = 1.0, True
        self.nodes += int((~terminal).sum())
        self.branching += int((~terminal & ~narrow).sum())
        value = np.zeros(m, np.float64)
        live = np.flatnonzero(~terminal)
        if len(live):
            value[live] = np.clip(self.value_fn(self.env, [states[i] for i in live]), -1.0, 1.0)
        return Expansion(prior=prior, valid=valid, value=value, terminal=terminal)

    def step(self, states, actions) -> Step:
        outcomes = [self.env.transition(s, int(a)) for s, a in zip(states, actions, strict=True)]
        children = np.empty(len(outcomes), dtype=object)
        children[:] = [o.state for o in outcomes]
        expansion = self.evaluate(children)
        if self.terminal_value_fn is None:
            reward = np.array([o.reward for o in outcomes], dtype=np.float64)
        else:
            reward = np.zeros(len(outcomes), np.float64)
            ended = np.flatnonzero(expansion.terminal)
            if len(ended):
                values = self.terminal_value_fn(self.env, [children[i] for i in ended])
                reward[ended] = np.clip(values, -1.0, 1.0)
        return Step(states=children, reward=reward, expansion=expansion)


def normalised_entropy(prior: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the entropy of the valid priors over ``log`` of their count, in [0, 1]; 1 where fewer than
    two candidates (nothing to narrow).

    >>> normalised_entropy(np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [1.0, 0.0, 0.0]]),
    ...                    np.array([[True, True, False], [True, True, False], [True, False, False]])).round(3)
    array([1.   , 0.469, 1.   ])
    """
    p = np.where(valid, prior, 0.0).astype(np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    count = valid.sum(axis=1)
    h = -(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0)).sum(axis=1)
    return np.where(count >= 2, h / np.log(np.maximum(count, 2)), 1.0)
