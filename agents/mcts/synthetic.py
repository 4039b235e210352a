"""A synthetic search problem with no language model: priors, values and rewards from a hash of the path.

Used to test the search against its plain-Python reference and to benchmark the tree code alone.
A state is a uint64: the path's 60-bit hash shifted left by 4, plus the depth. Everything about a
state (its K priors, which actions are valid, its value, whether it is terminal and the reward of
reaching it) is a pure function of that integer, computed with splitmix64 in a numba kernel, so that
a benchmark of the search measures the tree code, not this stand-in for a language model.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from agents.mcts.search import Expansion, Step

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_UNIT = 1.0 / 2.0**53


@njit(cache=True, inline="always")
def _mix(x):
    z = x + _M1
    z = (z ^ (z >> np.uint64(30))) * _M2
    z = (z ^ (z >> np.uint64(27))) * _M3
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _evaluate(states, num_actions, max_depth, terminal_rate, invalid_rate, prior, valid, value, terminal):
    for i in range(states.shape[0]):
        s = states[i]
        top, total = -np.inf, 0.0
        for a in range(num_actions):
            h = _mix(s * np.uint64(num_actions + 7) + np.uint64(a))
            prior[i, a] = (h >> np.uint64(11)) * _UNIT * 4.0
            valid[i, a] = (_mix(h) >> np.uint64(11)) * _UNIT >= invalid_rate or a == s % np.uint64(num_actions)
            if valid[i, a]:
                top = max(top, prior[i, a])
        for a in range(num_actions):
            prior[i, a] = math.exp(prior[i, a] - top) if valid[i, a] else 0.0
            total += prior[i, a]
        for a in range(num_actions):
            prior[i, a] /= total
        u = (_mix(s ^ np.uint64(0xABCDEF)) >> np.uint64(11)) * _UNIT
        value[i] = 2.0 * u - 1.0
        terminal[i] = (s & np.uint64(15)) >= max_depth or u < terminal_rate


@njit(cache=True)
def _children(states, actions, out):
    for i in range(states.shape[0]):
        child = _mix(states[i] * np.uint64(31) + np.uint64(actions[i]) + np.uint64(1)) >> np.uint64(4)
        out[i] = (child << np.uint64(4)) | ((states[i] & np.uint64(15)) + np.uint64(1))


@njit(cache=True)
def _step(
    states,
    actions,
    num_actions,
    max_depth,
    terminal_rate,
    invalid_rate,
    children,
    reward,
    prior,
    valid,
    value,
    terminal,
):
    _children(states, actions, children)
    _evaluate(children, num_actions, max_depth, terminal_rate, invalid_rate, prior, valid, value, terminal)
    for i in range(children.shape[0]):
        reward[i] = value[i] if terminal[i] else 0.0  # an episode's end pays its outcome


class HashTreeModel:
    """A tree of branching ``num_actions`` and depth up to ``max_depth`` (< 16) defined by hashing.

    Args:
        num_actions: K.
        max_depth: states at this depth are terminal.
        terminal_rate: chance that a state above ``max_depth`` ends the episode early.
        invalid_rate: chance that an action is masked (one action always stays valid).
        seed: picks the tree.
    """

    state_dtype = np.uint64

    def __init__(
        self,
        num_actions: int = 8,
        max_depth: int = 12,
        *,
        terminal_rate: float = 0.05,
        invalid_rate: float = 0.1,
        seed: int = 0,
    ):
        if not 1 <= max_depth < 16:
            raise ValueError(f"max_depth must lie in [1, 15] (it is stored in 4 bits), got {max_depth}")
        self.num_actions = num_actions
        self.max_depth = max_depth
        self.terminal_rate = terminal_rate
        self.invalid_rate = invalid_rate
        self.seed = seed

    def roots(self, batch_size: int) -> np.ndarray:
        """B root states (depth 0), different for every tree."""
        keys = np.arange(batch_size, dtype=np.uint64) + np.uint64(self.seed * 1_000_003)
        out = np.empty(batch_size, np.uint64)
        _children(keys, np.zeros(batch_size, np.int32), out)
        return out & ~np.uint64(15)

    def evaluate(self, states: np.ndarray) -> Expansion:
        out = self._empty(len(states))
        _evaluate(
            np.asarray(states, np.uint64),
            self.num_actions,
            self.max_depth,
            self.terminal_rate,
            self.invalid_rate,
            out.prior,
            out.valid,
            out.value,
            out.terminal,
        )
        return out

    def step(self, states: np.ndarray, actions: np.ndarray) -> Step:
        m = len(states)
        out = Step(states=np.empty(m, np.uint64), reward=np.empty(m), expansion=self._empty(m))
        x = out.expansion
        _step(
            np.asarray(states, np.uint64),
            np.asarray(actions, np.int32),
            self.num_actions,
            self.max_depth,
            self.terminal_rate,
            self.invalid_rate,
            out.states,
            out.reward,
            x.prior,
            x.valid,
            x.value,
            x.terminal,
        )
        return out

    def _empty(self, m: int) -> Expansion:
        k = self.num_actions
        return Expansion(np.empty((m, k), np.float32), np.empty((m, k), np.bool_), np.empty(m), np.empty(m, np.bool_))
