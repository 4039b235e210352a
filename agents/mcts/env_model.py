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
    """

    state_dtype = object

    def __init__(self, env: ReasoningEnv, value_fn: ValueFn, *, terminal_value_fn: ValueFn | None = None):
        self.env = env
        self.value_fn = value_fn
        self.terminal_value_fn = terminal_value_fn
        self.num_actions = int(env.action_space.n)

    def evaluate(self, states) -> Expansion:
        states = list(states)
        m, k = len(states), self.num_actions
        prior = np.zeros((m, k), np.float32)
        valid = np.zeros((m, k), np.bool_)
        for i, candidates in enumerate(self.env.expand(states)):
            prior[i, : len(candidates)] = [c.prior for c in candidates]
            valid[i, : len(candidates)] = True
        terminal = np.array([s.terminated or s.truncated for s in states], dtype=np.bool_)
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
