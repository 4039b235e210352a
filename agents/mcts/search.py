"""The search driver: B trees in lockstep, one batched model call per simulation round.

A round is: one kernel call selecting up to L leaves in every tree, one call of the model on all
new leaves together (it steps the environment, proposes the children's candidates and values
them, batched), one kernel call backing up. The per-node payload (an environment state, a hash,
anything) lives in an object array ``[B, N]`` indexed like the tree, so no Python loop runs per tree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agents.mcts import kernels
from agents.mcts.tree import ROOT_INDEX, Tree, new_tree
from azgym.overrides import int_override


@dataclass
class Expansion:
    """What the model says about M states: priors and masks over K actions, and a value each.

    The dtypes are part of the contract (the kernels take the arrays as they are).
    """

    prior: np.ndarray  # [M, K] float32, rows sum to 1 over valid actions
    valid: np.ndarray  # [M, K] bool
    value: np.ndarray  # [M] float64 in [-1, 1] (ignored for terminal states)
    terminal: np.ndarray  # [M] bool


@dataclass
class Step:
    """The children reached by M (state, action) pairs."""

    states: np.ndarray  # [M] object
    reward: np.ndarray  # [M] float64
    expansion: Expansion


class SearchModel(Protocol):
    """What the search needs from an environment: batched evaluation and batched transitions."""

    num_actions: int
    state_dtype: type  # dtype of the [B, N] array holding node states (object for Python objects)

    def evaluate(self, states: np.ndarray) -> Expansion:
        """Priors, masks, values and terminal flags of ``states`` ([M] object)."""
        ...

    def step(self, states: np.ndarray, actions: np.ndarray) -> Step:
        """Take ``actions[i]`` in ``states[i]`` and evaluate each child."""
        ...


@dataclass
class SearchResult:
    visits: np.ndarray  # [B, K] int32 root visit counts
    policy: np.ndarray  # [B, K] float64 visit distribution at the search temperature
    q_values: np.ndarray  # [B, K] float64 Q(root, a), NaN for actions never tried
    root_value: np.ndarray  # [B] float64 mean backed-up return at the root
    tree: Tree
    states: np.ndarray  # [B, N] object: the state of every node
    num_simulations: int  # simulations run per tree in this search
    seconds: dict[str, float] = field(default_factory=dict)  # "model", "tree" and "total" wall time

    def stats(self) -> dict[str, float]:
        """Scalars worth logging: tree size and depth, simulations/s, the tree code's share of time."""
        total = max(self.seconds.get("total", 0.0), 1e-12)
        return {
            "num_nodes": float(self.tree.num_nodes.mean()),
            "max_depth": float(self.tree.max_depth().mean()),
            "simulations_per_s": self.num_simulations * self.tree.batch_size / total,
            "tree_time_share": self.seconds.get("tree", 0.0) / total,
        }


class MCTS:
    """Batched PUCT search (AlphaZero / MuZero conventions, see :mod:`agents.mcts.kernels`).

    Args (keyword-only):
        num_simulations: simulations per tree and search (default 32, CPU-sized;
            ``$NUM_MCTS_ITERATIONS`` overrides the default, an explicit value wins).
        c_puct: exploration constant (1.25, MuZero's c1).
        pb_c_base: MuZero's c2 for the log schedule of c (19652); ``None`` keeps c constant.
        fpu_value: Q assumed for a child never visited (first-play urgency), before normalisation.
        discount: return discount per step (1.0: episodic).
        dirichlet_alpha / dirichlet_fraction: root noise Dir(alpha) mixed in with weight epsilon
            (0.3 / 0.25 as in AlphaZero chess; fraction 0 turns noise off).
        temperature: of the returned visit policy (1.0: proportional to visits; 0: the argmax).
        leaves_per_round: descents per tree per round; above 1 uses virtual loss.
        virtual_loss: value subtracted per in-flight descent through a node.
        max_depth: search horizon in edges below the root; deeper leaves back up their value.
    """

    def __init__(
        self,
        *,
        num_simulations: int | None = None,
        c_puct: float = 1.25,
        pb_c_base: float | None = 19652.0,
        fpu_value: float = 0.0,
        discount: float = 1.0,
        dirichlet_alpha: float = 0.3,
        dirichlet_fraction: float = 0.25,
        temperature: float = 1.0,
        leaves_per_round: int = 1,
        virtual_loss: float = 1.0,
        max_depth: int = 64,
    ):
        self.num_simulations = int_override(num_simulations, "NUM_MCTS_ITERATIONS", 32, name="num_simulations")
        checks = {  # name: (value, valid, the range it must lie in)
            "c_puct": (c_puct, c_puct >= 0, ">= 0"),
            "pb_c_base": (pb_c_base, pb_c_base is None or pb_c_base > 0, "> 0 or None"),
            "discount": (discount, 0 <= discount <= 1, "in [0, 1]"),
            "dirichlet_alpha": (dirichlet_alpha, dirichlet_alpha > 0, "> 0"),
            "dirichlet_fraction": (dirichlet_fraction, 0 <= dirichlet_fraction <= 1, "in [0, 1]"),
            "temperature": (temperature, temperature >= 0, ">= 0"),
            "leaves_per_round": (leaves_per_round, leaves_per_round >= 1, ">= 1"),
            "virtual_loss": (virtual_loss, virtual_loss >= 0, ">= 0"),
            "max_depth": (max_depth, max_depth >= 1, ">= 1"),
        }
        bad = [f"{name}={value!r} (must be {rule})" for name, (value, ok, rule) in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid MCTS settings: {', '.join(bad)}")
        self.c_puct = c_puct
        self.pb_c_base = pb_c_base
        self.fpu_value = fpu_value
        self.discount = discount
        self.dirichlet_alpha = dirichlet_alpha
        self.dirichlet_fraction = dirichlet_fraction
        self.temperature = temperature
        self.leaves_per_round = leaves_per_round
        self.virtual_loss = virtual_loss
        self.max_depth = max_depth

    def search(
        self,
        model: SearchModel,
        roots: np.ndarray | list,
        rng: np.random.Generator,
        *,
        reuse: tuple[Tree, np.ndarray, np.ndarray] | None = None,
    ) -> SearchResult:
        """Search from each of the B ``roots``.

        ``reuse``: ``(tree, states, new_roots)`` of an earlier search whose node ``new_roots[b]``
        is this search's root b; its subtree, visits included, is kept and extended.
        """
        start = time.perf_counter()
        timer = _ModelTimer(model)
        roots = roots if isinstance(roots, np.ndarray) else _object_array(roots)
        batch, k, sims = len(roots), model.num_actions, self.num_simulations
        if reuse is not None:
            tree, states = self._reused(reuse, sims, rng)
        else:
            tree = new_tree(batch, sims + 1, k)
            states = np.empty((batch, sims + 1), dtype=getattr(model, "state_dtype", object))
            root = timer.evaluate(roots)
            prior = self._noisy(root.prior, root.valid, rng)
            kernels.init_roots(
                tree.node_visits, tree.node_value_sum, tree.node_raw_value, tree.node_terminal,
                tree.children_prior, tree.children_valid, tree.num_nodes,
                prior, root.valid, root.value.astype(np.float64), root.terminal,
            )  # fmt: skip
            states[:, ROOT_INDEX] = roots
        self._run(timer, tree, states, sims)
        visits = tree.root_visits()
        total = time.perf_counter() - start
        return SearchResult(
            visits=visits,
            policy=kernels.visit_policy(visits, self.temperature),
            q_values=tree.q_values(ROOT_INDEX, self.discount),
            root_value=tree.node_value_sum[:, ROOT_INDEX] / np.maximum(tree.node_visits[:, ROOT_INDEX], 1),
            tree=tree,
            states=states,
            num_simulations=sims,
            seconds={"model": timer.seconds, "tree": total - timer.seconds, "total": total},
        )

    def _run(self, model: SearchModel, tree: Tree, states: np.ndarray, sims: int) -> None:
        batch, leaves = tree.batch_size, self.leaves_per_round
        pb_c_base = -1.0 if self.pb_c_base is None else float(self.pb_c_base)
        most_visits = int(tree.node_visits[:, ROOT_INDEX].max()) + sims + leaves + 1
        exploration = kernels.exploration_table(most_visits, self.c_puct, pb_c_base)
        leaf_node = np.zeros((batch, leaves), np.int32)
        leaf_kind = np.zeros((batch, leaves), np.int32)
        leaf_slot = np.zeros((batch, leaves), np.int32)
        exp_tree, exp_parent, exp_action, exp_node = (np.zeros(batch * leaves, np.int32) for _ in range(4))
        empty = _empty_expansion(tree.num_actions)
        done = 0
        while done < sims:
            width = min(leaves, sims - done)
            m = kernels.select_leaves(
                tree.node_visits, tree.node_value_sum, tree.node_virtual, tree.node_depth, tree.node_terminal,
                tree.children_index, tree.children_prior, tree.children_reward, tree.children_valid,
                tree.num_nodes, tree.q_min, tree.q_max,
                width, leaf_node, leaf_kind, leaf_slot, exp_tree, exp_parent, exp_action, exp_node,
                exploration, self.fpu_value, self.discount, self.virtual_loss, self.max_depth,
            )  # fmt: skip
            if m:
                rows = exp_tree[:m]
                step = model.step(states[rows, exp_parent[:m]], exp_action[:m])
                states[rows, exp_node[:m]] = step.states
                new, reward = step.expansion, step.reward
            else:
                new, reward = empty, empty.value
            kernels.backup(
                tree.node_visits, tree.node_value_sum, tree.node_raw_value, tree.node_virtual, tree.node_parent,
                tree.node_action, tree.node_depth, tree.node_terminal, tree.children_index, tree.children_prior,
                tree.children_reward, tree.children_valid, tree.num_nodes, tree.q_min, tree.q_max,
                width, leaf_node, leaf_kind, leaf_slot, exp_action, exp_node,
                new.prior, new.valid, reward, new.terminal, new.value, self.discount,
            )  # fmt: skip
            done += width

    def _noisy(self, prior: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Root priors mixed with Dirichlet(alpha) noise over the valid actions."""
        prior = np.asarray(prior, np.float32)
        if self.dirichlet_fraction == 0:
            return prior
        gamma = rng.gamma(self.dirichlet_alpha, size=prior.shape) * valid
        total = gamma.sum(axis=1, keepdims=True)
        noise = np.divide(gamma, total, out=np.zeros_like(gamma), where=total > 0)
        eps = self.dirichlet_fraction
        return ((1 - eps) * prior + eps * noise).astype(np.float32)

    def _reused(self, reuse, sims: int, rng: np.random.Generator) -> tuple[Tree, np.ndarray]:
        old, old_states, new_roots = reuse
        capacity = int(old.num_nodes.max()) + sims  # a subtree is never larger than its tree
        tree = new_tree(old.batch_size, capacity, old.num_actions)
        states = np.empty((old.batch_size, capacity), dtype=old_states.dtype)
        for b in range(old.batch_size):  # once per move, not per simulation
            old_to_new, count = kernels.copy_subtree(
                old.node_visits[b], old.node_value_sum[b], old.node_raw_value[b], old.node_parent[b],
                old.node_action[b], old.node_terminal[b], old.children_index[b], old.children_prior[b],
                old.children_reward[b], old.children_valid[b], int(new_roots[b]),
                tree.node_visits[b], tree.node_value_sum[b], tree.node_raw_value[b], tree.node_parent[b],
                tree.node_action[b], tree.node_depth[b], tree.node_terminal[b], tree.children_index[b],
                tree.children_prior[b], tree.children_reward[b], tree.children_valid[b],
            )  # fmt: skip
            kept = np.flatnonzero(old_to_new >= 0)
            states[b, old_to_new[kept]] = old_states[b, kept]
            tree.num_nodes[b] = count
        tree.q_min[:] = old.q_min
        tree.q_max[:] = old.q_max
        root = (slice(None), ROOT_INDEX)
        tree.children_prior[root] = self._noisy(tree.children_prior[root], tree.children_valid[root], rng)
        return tree, states


class _ModelTimer:
    """Wraps a SearchModel and adds up the wall time spent inside it."""

    def __init__(self, model: SearchModel):
        self.model = model
        self.num_actions = model.num_actions
        self.seconds = 0.0

    def evaluate(self, states):
        start = time.perf_counter()
        try:
            return self.model.evaluate(states)
        finally:
            self.seconds += time.perf_counter() - start

    def step(self, states, actions):
        start = time.perf_counter()
        try:
            return self.model.step(states, actions)
        finally:
            self.seconds += time.perf_counter() - start


def _empty_expansion(num_actions: int) -> Expansion:
    return Expansion(
        prior=np.zeros((0, num_actions), np.float32),
        valid=np.zeros((0, num_actions), np.bool_),
        value=np.zeros(0, np.float64),
        terminal=np.zeros(0, np.bool_),
    )


def _object_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out
