"""The search driver: B trees in lockstep, one batched model call per simulation round.

A round is: one kernel call selecting up to L leaves in every tree, one call of the model on all
new leaves together (it steps the environment, proposes the children's candidates and values
them, batched), one kernel call backing up. The per-node payload (an environment state, a hash,
anything) lives in an object array ``[B, N]`` indexed like the tree, so no Python loop runs per tree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

import numpy as np

from agents.mcts import kernels
from agents.mcts.gumbel import considered_visits, root_outcome
from agents.mcts.tree import ROOT_INDEX, Tree, new_tree

ROOTS = ("puct", "gumbel")  # SearchConfig.root


class SearchConfigError(ValueError):
    """Invalid search settings. ``problems`` lists ``(field, what is wrong)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid SearchConfig: " + "; ".join(f"{name}: {why}" for name, why in problems))


VALUE_BOUNDS = (-1.0, 1.0)  # the value scale's known bounds (azgym.rewards LOSS and WIN): q_bounds="fixed"


def _setting(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class SearchConfig:
    """The search: PUCT (AlphaZero / MuZero conventions) or Gumbel MuZero over teacher priors and value-head leaves.

    ``root="gumbel"`` follows mctx's ``gumbel_muzero_policy`` (see :mod:`agents.mcts.gumbel`): no Dirichlet
    noise, no PUCT settings; the result's ``policy`` is the improved policy and ``action`` the selected action.
    """

    num_simulations: int = _setting(
        32,
        "MCTS simulations per move; 1 turns search off (actions from the priors)",
        flag="--simulations",
        aliases=("--num-simulations",),
    )
    c_puct: float = _setting(1.25, "exploration constant c (MuZero's c1)")
    pb_c_base: float | None = _setting(19652.0, "MuZero's c2 of the log schedule of c; none keeps c constant")
    fpu_value: float = _setting(0.0, "Q of a child never visited (first-play urgency), before normalisation")
    discount: float = _setting(1.0, "return discount per step (1: episodic)")
    dirichlet_alpha: float = _setting(0.3, "root noise Dir(alpha)")
    dirichlet_fraction: float = _setting(0.25, "weight of the root noise (0 turns it off)")
    temperature: float = _setting(
        1.0, "temperature of the visit policy moves are drawn from (0: the most visited)", flag="--search-temperature"
    )
    leaves_per_round: int = _setting(1, "descents per tree per simulation round; above 1 uses virtual loss")
    virtual_loss: float = _setting(1.0, "value subtracted per descent in flight through a node")
    max_search_depth: int = _setting(64, "search horizon in edges below the root; deeper leaves back up their value")
    root: str = _setting(
        "puct",
        "puct (AlphaZero / MuZero), or gumbel (Gumbel MuZero: Sequential Halving with Gumbel "
        "at the root, mctx's deterministic rule below it, completed-Q improved policy)",
        flag="--search-root",
        choices=ROOTS,
    )
    gumbel_scale: float = _setting(1.0, "gumbel: scale of the root's Gumbel noise (0: deterministic)")
    max_considered_actions: int = _setting(
        16, "gumbel: root actions sampled without replacement (Gumbel-top-k) for Sequential Halving"
    )
    c_visit: float = _setting(50.0, "gumbel: sigma(q) = (c_visit + max visits) * c_scale * q, the visit offset")
    c_scale: float = _setting(0.1, "gumbel: the scale c_scale of sigma(q)")
    q_bounds: str = _setting(
        "minmax",
        "how Q is normalised to [0, 1] (PUCT's Qn, Gumbel's completed Q): minmax "
        "(by the smallest and largest Q seen: tree-wide for PUCT, per node for Gumbel) or fixed "
        "(by the value scale's known bounds [-1, 1], so value-head noise is not stretched)",
        choices=("minmax", "fixed"),
    )

    @property
    def searches(self) -> bool:
        """Whether this config searches at all: 1 simulation turns search off (the actions come from the
        priors). The one place that decides it (the self-play player and the config rules ask here)."""
        return self.num_simulations >= 2

    def __post_init__(self):
        rules = {  # name: (holds, the rule)
            "num_simulations": (self.num_simulations >= 1, ">= 1"),
            "c_puct": (self.c_puct >= 0, ">= 0"),
            "pb_c_base": (self.pb_c_base is None or self.pb_c_base > 0, "> 0 or none"),
            "discount": (0 <= self.discount <= 1, "in [0, 1]"),
            "dirichlet_alpha": (self.dirichlet_alpha > 0, "> 0"),
            "dirichlet_fraction": (0 <= self.dirichlet_fraction <= 1, "in [0, 1]"),
            "temperature": (self.temperature >= 0, ">= 0"),
            "leaves_per_round": (self.leaves_per_round >= 1, ">= 1"),
            "virtual_loss": (self.virtual_loss >= 0, ">= 0"),
            "max_search_depth": (self.max_search_depth >= 1, ">= 1"),
            "root": (self.root in ROOTS, f"one of {', '.join(ROOTS)}"),
            "gumbel_scale": (self.gumbel_scale >= 0, ">= 0"),
            "max_considered_actions": (self.max_considered_actions >= 1, ">= 1"),
            "c_visit": (self.c_visit >= 0, ">= 0"),
            "c_scale": (self.c_scale >= 0, ">= 0"),
            "q_bounds": (self.q_bounds in ("minmax", "fixed"), "minmax or fixed"),
        }
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = [
            (name, f"must be a finite number, got {value}")
            for name, value in values.items()
            if isinstance(value, float) and not math.isfinite(value)
        ]
        bad = {name for name, _ in problems}
        problems += [
            (name, f"must be {rule}, got {getattr(self, name)!r}")
            for name, (holds, rule) in rules.items()
            if not holds and name not in bad
        ]
        if problems:
            raise SearchConfigError(problems)


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
    policy: np.ndarray  # [B, K] float64 puct: visit distribution at the search temperature; gumbel: improved policy
    q_values: np.ndarray  # [B, K] float64 Q(root, a), NaN for actions never tried
    root_value: np.ndarray  # [B] float64 mean backed-up return at the root
    tree: Tree
    states: np.ndarray  # [B, N] object: the state of every node
    num_simulations: int  # simulations run per tree in this search
    seconds: dict[str, float] = field(default_factory=dict)  # "model", "tree" and "total" wall time
    improved_policy: np.ndarray | None = None  # [B, K] float64 gumbel: softmax(logits + sigma(completed Q))
    action: np.ndarray | None = None  # [B] int32 gumbel: the selected action (-1 where there is none)
    gumbel: np.ndarray | None = None  # [B, K] float64 gumbel: the root's scaled Gumbel noise

    def choose(self, rng: np.random.Generator) -> np.ndarray:
        """[B] int the move of each tree: gumbel's selected action, else a draw from ``policy`` (-1: no action)."""
        if self.action is not None:
            return self.action.astype(np.int64)
        out = np.full(len(self.policy), -1, np.int64)
        for b, row in enumerate(self.policy):  # once per move, not per simulation
            if row.sum() > 0:
                out[b] = rng.choice(len(row), p=row / row.sum())
        return out

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
    """Batched PUCT (AlphaZero / MuZero, :mod:`agents.mcts.kernels`) or Gumbel MuZero (`agents.mcts.gumbel`).

    Takes a :class:`SearchConfig` or its fields as keyword arguments (``MCTS(num_simulations=8)``);
    each field's meaning is documented there. The settings are readable as attributes.
    """

    def __init__(self, config: SearchConfig | None = None, **settings):
        self.config = SearchConfig(**settings) if config is None else replace(config, **settings)

    def search(
        self,
        model: SearchModel,
        roots: np.ndarray | list,
        rng: np.random.Generator | Sequence[np.random.Generator],
        *,
        reuse: tuple[Tree, np.ndarray, np.ndarray] | None = None,
    ) -> SearchResult:
        """Search from each of the B ``roots``.

        ``rng`` draws the root noise (Dirichlet or Gumbel): one generator for all trees, or one per tree
        (B of them; a tree's search then does not depend on the other trees of the batch).

        ``reuse``: ``(tree, states, new_roots)`` of an earlier search whose node ``new_roots[b]``
        is this search's root b; its subtree, visits included, is kept and extended (PUCT only:
        Sequential Halving spends a fresh budget from unvisited roots).
        """
        start = time.perf_counter()
        timer = _ModelTimer(model)
        roots = roots if isinstance(roots, np.ndarray) else _object_array(roots)
        batch, k, sims = len(roots), model.num_actions, self.config.num_simulations
        gumbel = None
        if self.config.root == "gumbel":
            if reuse is not None:
                raise ValueError("subtree reuse needs root='puct': a Gumbel search halves a fresh budget at the root")
            gumbel = self.config.gumbel_scale * _draw(rng, batch, k, lambda g, size: g.gumbel(size=size))
        if reuse is not None:
            tree, states = self._reused(reuse, sims, rng)
        else:
            tree = new_tree(batch, sims + 1, k)
            states = np.empty((batch, sims + 1), dtype=getattr(model, "state_dtype", object))
            root = timer.evaluate(roots)
            prior = (
                np.asarray(root.prior, np.float32) if gumbel is not None else self._noisy(root.prior, root.valid, rng)
            )
            kernels.init_roots(tree, kernels.NewNodes(prior, root.valid, root.value.astype(np.float64), root.terminal))
            states[:, ROOT_INDEX] = roots
        params = self._params(tree, sims, gumbel)
        self._run(timer, tree, states, sims, params)
        visits = tree.root_visits()
        improved, action = root_outcome(tree, params) if gumbel is not None else (None, None)
        total = time.perf_counter() - start
        return SearchResult(
            visits=visits,
            policy=improved if gumbel is not None else kernels.visit_policy(visits, self.config.temperature),
            q_values=tree.q_values(ROOT_INDEX, self.config.discount),
            root_value=tree.node_value_sum[:, ROOT_INDEX] / np.maximum(tree.node_visits[:, ROOT_INDEX], 1),
            tree=tree,
            states=states,
            num_simulations=sims,
            seconds={"model": timer.seconds, "tree": total - timer.seconds, "total": total},
            improved_policy=improved,
            action=action,
            gumbel=gumbel,
        )

    def _params(self, tree: Tree, sims: int, gumbel: np.ndarray | None) -> kernels.Params:
        config = self.config
        pb_c_base = -1.0 if config.pb_c_base is None else float(config.pb_c_base)
        most_visits = int(tree.node_visits[:, ROOT_INDEX].max()) + sims + config.leaves_per_round + 1
        params = kernels.Params(
            exploration=kernels.exploration_table(most_visits, config.c_puct, pb_c_base),
            fpu_value=float(config.fpu_value),
            discount=float(config.discount),
            virtual_loss=float(config.virtual_loss),
            max_search_depth=int(config.max_search_depth),
            q_low=VALUE_BOUNDS[0] if config.q_bounds == "fixed" else math.nan,
            q_high=VALUE_BOUNDS[1] if config.q_bounds == "fixed" else math.nan,
        )
        if gumbel is None:
            return params
        return params._replace(
            rule=kernels.GUMBEL,
            gumbel=gumbel,
            considered_visits=considered_visits(min(config.max_considered_actions, tree.num_actions), sims),
            c_visit=float(config.c_visit),
            c_scale=float(config.c_scale),
        )

    def _run(self, model: SearchModel, tree: Tree, states: np.ndarray, sims: int, params: kernels.Params) -> None:
        leaves_per_round = self.config.leaves_per_round
        leaves = kernels.new_leaves(tree.batch_size, leaves_per_round)
        empty = _empty_expansion(tree.num_actions)
        nothing = kernels.NewNodes(empty.prior, empty.valid, empty.value, empty.terminal)
        width, done = min(leaves_per_round, sims), 0
        m = kernels.backup_and_select(
            tree, leaves, params, backup_width=0, new=nothing, reward=empty.value, select_width=width
        )
        while width:  # one round: the model expands the M leaves selected, then back up and select again
            if m:
                rows = leaves.exp_tree[:m]
                step = model.step(states[rows, leaves.exp_parent[:m]], leaves.exp_action[:m])
                states[rows, leaves.exp_node[:m]] = step.states
                new = step.expansion
                children, reward = kernels.NewNodes(new.prior, new.valid, new.value, new.terminal), step.reward
            else:
                children, reward = nothing, empty.value
            done += width
            last, width = width, min(leaves_per_round, sims - done)
            m = kernels.backup_and_select(
                tree, leaves, params, backup_width=last, new=children, reward=reward, select_width=width
            )

    def _noisy(self, prior: np.ndarray, valid: np.ndarray, rng) -> np.ndarray:
        """Root priors mixed with Dirichlet(alpha) noise over the valid actions."""
        prior = np.asarray(prior, np.float32)
        if self.config.dirichlet_fraction == 0:
            return prior
        alpha = self.config.dirichlet_alpha
        gamma = _draw(rng, *prior.shape, lambda g, size: g.gamma(alpha, size=size)) * valid
        total = gamma.sum(axis=1, keepdims=True)
        noise = np.divide(gamma, total, out=np.zeros_like(gamma), where=total > 0)
        eps = self.config.dirichlet_fraction
        return ((1 - eps) * prior + eps * noise).astype(np.float32)

    def _reused(self, reuse, sims: int, rng) -> tuple[Tree, np.ndarray]:
        old, old_states, new_roots = reuse
        capacity = int(old.num_nodes.max()) + sims  # a subtree is never larger than its tree
        tree = new_tree(old.batch_size, capacity, old.num_actions)
        states = np.empty((old.batch_size, capacity), dtype=old_states.dtype)
        for b in range(old.batch_size):  # once per move, not per simulation
            old_to_new, _ = kernels.copy_subtree(old, b, int(new_roots[b]), tree, b)
            kept = np.flatnonzero(old_to_new >= 0)
            states[b, old_to_new[kept]] = old_states[b, kept]
        tree.q_min[:] = old.q_min
        tree.q_max[:] = old.q_max
        root = (slice(None), ROOT_INDEX)
        tree.children_prior[root] = self._noisy(tree.children_prior[root], tree.children_valid[root], rng)
        return tree, states


def _draw(rng, batch: int, k: int, draw) -> np.ndarray:
    """[batch, k] from ``draw(generator, size)``: one generator for all rows, or one per row."""
    if isinstance(rng, np.random.Generator):
        return draw(rng, (batch, k))
    if len(rng) != batch:
        raise ValueError(f"one generator per tree: {batch} trees, {len(rng)} generators")
    return np.stack([draw(g, k) for g in rng]) if batch else np.zeros((0, k))


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
