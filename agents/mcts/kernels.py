"""numba kernels over the arrays of :mod:`agents.mcts.tree`; each loops over all B trees inside.

PUCT, as implemented in :func:`select_leaves` (symbols: N = visits, P = prior, Q = action value,
V = node value)::

    score(s, a) = Qn(s, a) + c(s) * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
    Q(s, a)     = r(s, a) + discount * V(s')           for an existing child s'
                = fpu_value                            for a child not created yet (first-play urgency)
    Qn          = (Q - q_min) / (q_max - q_min)        min-max over the Q values the tree has seen;
                                                       Q itself while q_max <= q_min (as MuZero)
    c(s)        = c_puct + log((N(s) + pb_c_base + 1) / pb_c_base)   if pb_c_base > 0 (MuZero)
                = c_puct                                             otherwise (AlphaZero)

N(s) counts the visit that created s, so the first selection at a fresh node follows the prior.
Ties go to the lowest action index. With virtual loss, every node a descent passes holds one
virtual visit until backup: it adds to N and lowers V by ``virtual_loss`` per virtual visit, so
several descents in one round (``leaves_per_tree > 1``) spread over the tree. An edge chosen for
expansion is PENDING for the rest of the round and cannot be chosen again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from agents.mcts.tree import COLLISION, EXISTING, EXPAND, FULL, NO_PARENT, PENDING, ROOT_INDEX, UNVISITED


@njit(cache=True, inline="always")
def _select_action(
    b, node, node_visits, node_value_sum, node_virtual, children_index, children_prior, children_reward,
    children_valid, q_low, q_scale, exploration_table, fpu_value, discount, virtual_loss,
):  # fmt: skip
    """Best action at ``node`` (-1 when none is selectable) and whether any valid edge was pending.

    ``Qn = (Q - q_low) * q_scale``: the min-max normalisation, or the identity (0, 1) before the
    tree has seen two different Q values. ``exploration_table[N] = c(N) * sqrt(N)``.
    """
    exploration = exploration_table[node_visits[b, node] + node_virtual[b, node]]
    best, best_score, pending = -1, -np.inf, False
    for a in range(children_index.shape[2]):
        if not children_valid[b, node, a]:
            continue
        child = children_index[b, node, a]
        if child == PENDING:
            pending = True
            continue
        if child == UNVISITED:
            visits = 0
            q = fpu_value
        else:
            visits = node_visits[b, child] + node_virtual[b, child]
            value = (node_value_sum[b, child] - virtual_loss * node_virtual[b, child]) / visits
            q = children_reward[b, node, a] + discount * value
        score = (q - q_low) * q_scale + exploration * children_prior[b, node, a] / (1.0 + visits)
        if score > best_score:
            best, best_score = a, score
    return best, pending


@njit(cache=True)
def exploration_table(size, c_puct, pb_c_base):
    """``c(N) * sqrt(N)`` for N in [0, size): the parent factor of PUCT's exploration term."""
    out = np.empty(size, np.float64)
    for n in range(size):
        c = c_puct
        if pb_c_base > 0.0:
            c += math.log((n + pb_c_base + 1.0) / pb_c_base)
        out[n] = c * math.sqrt(n)
    return out


@njit(cache=True)
def select_leaves(
    node_visits, node_value_sum, node_virtual, node_depth, node_terminal, children_index, children_prior,
    children_reward, children_valid, num_nodes, q_min, q_max,
    width, leaf_node, leaf_kind, leaf_slot, exp_tree, exp_parent, exp_action, exp_node,
    exploration, fpu_value, discount, virtual_loss, max_depth,
):  # fmt: skip
    """Descend ``width`` times from the root of every tree; return M, the number of leaves to expand.

    Per descent ``[b, l]`` (l < width): leaf_node is where it stopped (the parent of the new node
    for EXPAND), leaf_kind is EXPAND / EXISTING / COLLISION / FULL, leaf_slot is its row m in the
    compact expansion list. Per expansion m < M: exp_tree, exp_parent, exp_action, and exp_node (the
    index the new node will get). Rows are in (b, l) order. ``exploration`` comes from
    :func:`exploration_table` and must cover every node's visits plus ``width``.
    """
    batch = leaf_node.shape[0]
    capacity = node_visits.shape[1]
    m = 0
    for b in range(batch):
        if q_max[b] > q_min[b]:
            q_low, q_scale = q_min[b], 1.0 / (q_max[b] - q_min[b])
        else:
            q_low, q_scale = 0.0, 1.0
        scheduled = 0
        for l in range(width):
            node = ROOT_INDEX
            node_virtual[b, node] += 1
            leaf_slot[b, l] = -1
            while True:
                if node_terminal[b, node] or node_depth[b, node] >= max_depth:
                    leaf_kind[b, l] = EXISTING
                    break
                action, pending = _select_action(
                    b, node, node_visits, node_value_sum, node_virtual, children_index, children_prior,
                    children_reward, children_valid, q_low, q_scale, exploration, fpu_value, discount,
                    virtual_loss,
                )  # fmt: skip
                if action < 0:
                    leaf_kind[b, l] = COLLISION if pending else EXISTING
                    break
                child = children_index[b, node, action]
                if child == UNVISITED:
                    if num_nodes[b] + scheduled >= capacity:
                        leaf_kind[b, l] = FULL
                        break
                    children_index[b, node, action] = PENDING
                    leaf_kind[b, l] = EXPAND
                    leaf_slot[b, l] = m
                    exp_tree[m] = b
                    exp_parent[m] = node
                    exp_action[m] = action
                    exp_node[m] = num_nodes[b] + scheduled
                    scheduled += 1
                    m += 1
                    break
                node = child
                node_virtual[b, node] += 1
            leaf_node[b, l] = node
    return m


@njit(cache=True)
def backup(
    node_visits, node_value_sum, node_raw_value, node_virtual, node_parent, node_action, node_depth,
    node_terminal, children_index, children_prior, children_reward, children_valid, num_nodes, q_min, q_max,
    width, leaf_node, leaf_kind, leaf_slot, exp_action, exp_node,
    new_prior, new_valid, new_reward, new_terminal, new_value, discount,
):  # fmt: skip
    """Create the new nodes from the ``new_*`` rows ([M, K] / [M]) and back up every descent.

    The return backed up through an edge is ``r(s, a) + discount * G``, starting from the new node's
    value (0 when terminal: its reward already sits on the edge) or the existing leaf's own value.
    The round's virtual visits are removed first.
    """
    batch = leaf_node.shape[0]
    for b in range(batch):
        for l in range(width):
            node = leaf_node[b, l]
            walk = node
            while walk != NO_PARENT:
                node_virtual[b, walk] -= 1
                walk = node_parent[b, walk]
            kind = leaf_kind[b, l]
            if kind == COLLISION or kind == FULL:  # noqa: SIM109 (numba: plain comparisons)
                continue
            if kind == EXPAND:
                m = leaf_slot[b, l]
                child = exp_node[m]
                action = exp_action[m]
                num_nodes[b] = max(num_nodes[b], child + 1)
                children_index[b, node, action] = child
                children_reward[b, node, action] = new_reward[m]
                node_parent[b, child] = node
                node_action[b, child] = action
                node_depth[b, child] = node_depth[b, node] + 1
                node_terminal[b, child] = new_terminal[m]
                for a in range(children_prior.shape[2]):
                    children_prior[b, child, a] = new_prior[m, a]
                    children_valid[b, child, a] = new_valid[m, a] and not new_terminal[m]
                node_raw_value[b, child] = 0.0 if new_terminal[m] else new_value[m]
            else:
                child = node
            ret = node_raw_value[b, child]
            node_visits[b, child] += 1
            node_value_sum[b, child] += ret
            while node_parent[b, child] != NO_PARENT:
                parent = node_parent[b, child]
                action = node_action[b, child]
                q = children_reward[b, parent, action] + discount * node_value_sum[b, child] / node_visits[b, child]
                q_min[b] = min(q_min[b], q)
                q_max[b] = max(q_max[b], q)
                ret = children_reward[b, parent, action] + discount * ret
                node_visits[b, parent] += 1
                node_value_sum[b, parent] += ret
                child = parent


@njit(cache=True)
def init_roots(
    node_visits, node_value_sum, node_raw_value, node_terminal, children_prior, children_valid, num_nodes,
    root_prior, root_valid, root_value, root_terminal,
):  # fmt: skip
    """Create node 0 of every tree: one visit worth its value estimate, its priors and action mask."""
    for b in range(node_visits.shape[0]):
        value = 0.0 if root_terminal[b] else root_value[b]
        node_visits[b, ROOT_INDEX] = 1
        node_value_sum[b, ROOT_INDEX] = value
        node_raw_value[b, ROOT_INDEX] = value
        node_terminal[b, ROOT_INDEX] = root_terminal[b]
        for a in range(children_prior.shape[2]):
            children_prior[b, ROOT_INDEX, a] = root_prior[b, a]
            children_valid[b, ROOT_INDEX, a] = root_valid[b, a] and not root_terminal[b]
        num_nodes[b] = 1


@njit(cache=True)
def visit_policy(visits, temperature):
    """[B, K] action probabilities from root visit counts: ``N^(1/T)`` normalised; T = 0 is the argmax.

    A row with no visits gets all zeros.
    """
    batch, k = visits.shape
    out = np.zeros((batch, k), np.float64)
    for b in range(batch):
        total = 0
        best = 0
        for a in range(k):
            total += visits[b, a]
            if visits[b, a] > visits[b, best]:
                best = a
        if total == 0:
            continue
        if temperature <= 0.0:
            out[b, best] = 1.0
            continue
        top = visits[b, best]
        norm = 0.0
        for a in range(k):
            if visits[b, a] > 0:
                out[b, a] = math.exp(math.log(visits[b, a] / top) / temperature)
                norm += out[b, a]
        for a in range(k):
            out[b, a] /= norm
    return out


@njit(cache=True)
def copy_subtree(
    src_visits, src_value_sum, src_raw_value, src_parent, src_action, src_terminal, src_index, src_prior,
    src_reward, src_valid, new_root,
    dst_visits, dst_value_sum, dst_raw_value, dst_parent, dst_action, dst_depth, dst_terminal, dst_index,
    dst_prior, dst_reward, dst_valid,
):  # fmt: skip
    """Copy the subtree under ``new_root`` of one tree (1-D/2-D slices) into an empty one, breadth first.

    Returns ``old_to_new`` ([N_src] int32, -1 for nodes dropped) and the number of nodes copied;
    raises when the destination is too small.
    """
    n_src = src_visits.shape[0]
    k = src_index.shape[1]
    old_to_new = np.full(n_src, -1, np.int32)
    queue = np.empty(n_src, np.int32)
    queue[0] = new_root
    old_to_new[new_root] = 0
    head, tail = 0, 1
    while head < tail:
        old = queue[head]
        new = old_to_new[old]
        if new >= dst_visits.shape[0]:
            raise ValueError("subtree larger than the destination tree")
        dst_visits[new] = src_visits[old]
        dst_value_sum[new] = src_value_sum[old]
        dst_raw_value[new] = src_raw_value[old]
        dst_terminal[new] = src_terminal[old]
        if head == 0:
            dst_parent[new] = NO_PARENT
            dst_action[new] = -1
            dst_depth[new] = 0
        else:
            dst_parent[new] = old_to_new[src_parent[old]]
            dst_action[new] = src_action[old]
            dst_depth[new] = dst_depth[dst_parent[new]] + 1
        for a in range(k):
            dst_prior[new, a] = src_prior[old, a]
            dst_reward[new, a] = src_reward[old, a]
            dst_valid[new, a] = src_valid[old, a]
            child = src_index[old, a]
            if child >= 0:
                old_to_new[child] = tail
                queue[tail] = child
                tail += 1
                dst_index[new, a] = old_to_new[child]
            else:
                dst_index[new, a] = UNVISITED
        head += 1
    return old_to_new, tail
