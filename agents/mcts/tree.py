"""The search tree of B independent searches as flat, preallocated arrays.

Shapes: B trees, N node slots per tree, K actions per node. Node ``i`` of a tree is the i-th node
created in it (the root is 0), so a search of S simulations with one leaf per round fills nodes
0..S. Per-node arrays are ``[B, N]``; per-edge arrays ``[B, N, K]``. Values are float64 so that the
plain-Python reference in the tests reproduces every visit count exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

ROOT_INDEX = 0
NO_PARENT = -1
UNVISITED = -1  # children_index of an edge whose child does not exist yet
PENDING = -2  # children_index of an edge chosen for expansion in the current round

# leaf kinds returned by selection
EXPAND = 0  # a new child is to be created at (leaf_node, leaf_action)
EXISTING = 1  # descent ended on an existing node (terminal, depth limit, no valid action): back up its value
COLLISION = 2  # every valid child was already pending this round: nothing to expand
FULL = 3  # the tree has no free node slot left


class Tree(NamedTuple):
    """B search trees; every field is a NumPy array, shapes as commented.

    A NamedTuple so that the numba kernels take the whole tree as one argument and read its arrays
    by name. The arrays are mutable in place; the tuple itself is not (no field is ever rebound).
    """

    node_visits: np.ndarray  # [B, N] int32  N(s): visits, counting the visit that created the node
    node_value_sum: np.ndarray  # [B, N] float64  sum of backed-up returns from the node on
    node_raw_value: np.ndarray  # [B, N] float64  value estimate at creation (0 for a terminal node)
    node_virtual: np.ndarray  # [B, N] int32  descents in flight through the node (virtual loss)
    node_parent: np.ndarray  # [B, N] int32  NO_PARENT for the root
    node_action: np.ndarray  # [B, N] int32  the action that led from the parent
    node_depth: np.ndarray  # [B, N] int32  edges from the root
    node_terminal: np.ndarray  # [B, N] bool  the episode ended at this node
    children_index: np.ndarray  # [B, N, K] int32  child node, UNVISITED or PENDING
    children_prior: np.ndarray  # [B, N, K] float32  P(s, a)
    children_reward: np.ndarray  # [B, N, K] float64  r(s, a), known once the child exists
    children_valid: np.ndarray  # [B, N, K] bool  the action exists in this state
    num_nodes: np.ndarray  # [B] int32  nodes created
    q_min: np.ndarray  # [B] float64  smallest Q(s, a) backed up so far (min-max normalisation)
    q_max: np.ndarray  # [B] float64  largest Q(s, a) backed up so far

    @property
    def batch_size(self) -> int:
        return self.node_visits.shape[0]

    @property
    def capacity(self) -> int:
        return self.node_visits.shape[1]

    @property
    def num_actions(self) -> int:
        return self.children_index.shape[2]

    def root_visits(self) -> np.ndarray:
        """[B, K] int32 visit counts of the root's children (0 for children never created)."""
        child = self.children_index[:, ROOT_INDEX, :]
        rows = np.arange(self.batch_size)[:, None]
        return np.where(child >= 0, self.node_visits[rows, np.maximum(child, 0)], 0).astype(np.int32)

    def q_values(self, node: int, discount: float = 1.0) -> np.ndarray:
        """[B, K] float64 Q(node, a) = r + discount * V(child); NaN for children never created."""
        child = self.children_index[:, node, :]
        rows = np.arange(self.batch_size)[:, None]
        safe = np.maximum(child, 0)
        visits = np.maximum(self.node_visits[rows, safe], 1)
        q = self.children_reward[:, node, :] + discount * (self.node_value_sum[rows, safe] / visits)
        return np.where(child >= 0, q, np.nan)

    def max_depth(self) -> np.ndarray:
        """[B] deepest node of each tree."""
        mask = np.arange(self.capacity)[None, :] < self.num_nodes[:, None]
        return np.where(mask, self.node_depth, 0).max(axis=1)


def new_tree(batch_size: int, capacity: int, num_actions: int) -> Tree:
    """Empty trees: no nodes, every edge unvisited, min-max bounds empty."""
    b, n, k = batch_size, capacity, num_actions
    return Tree(
        node_visits=np.zeros((b, n), np.int32),
        node_value_sum=np.zeros((b, n), np.float64),
        node_raw_value=np.zeros((b, n), np.float64),
        node_virtual=np.zeros((b, n), np.int32),
        node_parent=np.full((b, n), NO_PARENT, np.int32),
        node_action=np.full((b, n), -1, np.int32),
        node_depth=np.zeros((b, n), np.int32),
        node_terminal=np.zeros((b, n), np.bool_),
        children_index=np.full((b, n, k), UNVISITED, np.int32),
        children_prior=np.zeros((b, n, k), np.float32),
        children_reward=np.zeros((b, n, k), np.float64),
        children_valid=np.zeros((b, n, k), np.bool_),
        num_nodes=np.zeros(b, np.int32),
        q_min=np.full(b, np.inf),
        q_max=np.full(b, -np.inf),
    )
