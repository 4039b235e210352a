"""numba kernels over the arrays of :mod:`agents.mcts.tree`; each loops over all B trees inside.

The kernels take the :class:`~agents.mcts.tree.Tree` whole, and the round's other arrays grouped
the same way (:class:`Leaves`, :class:`NewNodes`, :class:`Params`), all NamedTuples read by field
name, so two arrays of the same type cannot be swapped by position without anyone noticing.

PUCT, as implemented in :func:`select_leaves` (symbols: N = visits, P = prior, Q = action value,
V = node value)::

    score(s, a) = Qn(s, a) + c(s) * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
    Q(s, a)     = r(s, a) + discount * V(s')           for an existing child s'
                = fpu_value                            for a child not created yet (first-play urgency)
    Qn          = (Q - q_min) / (q_max - q_min)        min-max over the Q values the tree has seen;
                                                       Q itself while q_max <= q_min (as MuZero);
                = (Q - q_low) / (q_high - q_low)       with fixed bounds (``Params.q_low``/``q_high``:
                                                       the value scale's [-1, 1], ``--q-bounds fixed``)
    c(s)        = c_puct + log((N(s) + pb_c_base + 1) / pb_c_base)   if pb_c_base > 0 (MuZero)
                = c_puct                                             otherwise (AlphaZero)

N(s) counts the visit that created s, so the first selection at a fresh node follows the prior.
With ``params.rule == GUMBEL`` the root uses Sequential Halving with Gumbel and the other nodes
mctx's deterministic rule instead (:mod:`agents.mcts.gumbel`); everything else is shared.
Ties go to the lowest action index. With virtual loss, every node a descent passes holds one
virtual visit until backup: it adds to N and lowers V by ``virtual_loss`` per virtual visit, so
several descents in one round (``leaves_per_round > 1``) spread over the tree. An edge chosen for
expansion is PENDING for the rest of the round and cannot be chosen again.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from agents.mcts.gumbel import select_interior, select_root
from agents.mcts.tree import COLLISION, EXISTING, EXPAND, FULL, NO_PARENT, PENDING, ROOT_INDEX, UNVISITED, Tree


class Leaves(NamedTuple):
    """One round's descents ``[b, l]`` (l < width <= L) and the compact list of the M expansions they schedule.

    Written by :func:`select_leaves`, read by :func:`backup`. Expansion rows are in (b, l) order.
    """

    node: np.ndarray  # [B, L] int32  where the descent stopped (the parent of the new node for EXPAND)
    kind: np.ndarray  # [B, L] int32  EXPAND / EXISTING / COLLISION / FULL
    slot: np.ndarray  # [B, L] int32  its row m in the expansion list, -1 when it expands nothing
    exp_tree: np.ndarray  # [B * L] int32  row m: the tree b
    exp_parent: np.ndarray  # [B * L] int32  row m: the node the new child hangs from
    exp_action: np.ndarray  # [B * L] int32  row m: the action leading to it
    exp_node: np.ndarray  # [B * L] int32  row m: the index the new node will get


def new_leaves(batch_size: int, leaves_per_round: int) -> Leaves:
    """Scratch for rounds of up to ``leaves_per_round`` descents per tree."""
    b, l = batch_size, leaves_per_round
    return Leaves(*(np.zeros((b, l), np.int32) for _ in range(3)), *(np.zeros(b * l, np.int32) for _ in range(4)))


class NewNodes(NamedTuple):
    """What the model says about M new nodes (or the B roots), one row each; the dtypes are the contract."""

    prior: np.ndarray  # [M, K] float32  P(s, a)
    valid: np.ndarray  # [M, K] bool  the action exists in s
    value: np.ndarray  # [M] float64  V(s) estimate (ignored when terminal)
    terminal: np.ndarray  # [M] bool  the episode ended at s


PUCT, GUMBEL = 0, 1  # Params.rule: how descents choose actions


class Params(NamedTuple):
    """The search settings the kernels read (see the module docstring for the symbols).

    The last five fields matter only to ``rule == GUMBEL`` (see :mod:`agents.mcts.gumbel`) and default to PUCT.
    """

    exploration: np.ndarray  # [V] float64  c(N) * sqrt(N), from exploration_table; V > every N + width
    fpu_value: float  # Q of a child not created yet
    discount: float  # per-step return discount
    virtual_loss: float  # value subtracted per virtual visit
    max_search_depth: int  # nodes this many edges below the root are not expanded
    rule: int = PUCT  # PUCT, or GUMBEL (Sequential Halving with Gumbel at the root, mctx's rule below)
    gumbel: np.ndarray = np.zeros((0, 0))  # [B, K] float64  the root's scaled Gumbel noise g
    considered_visits: np.ndarray = np.zeros((1, 1), np.int32)  # [m + 1, S] int32  gumbel.considered_visits
    c_visit: float = 50.0  # sigma(q) = (c_visit + max N) * c_scale * q
    c_scale: float = 0.1
    q_low: float = math.nan  # with q_high: fixed bounds of Q for its normalisation (both NaN: min-max over the tree)
    q_high: float = math.nan


@njit(cache=True, inline="always")
def _select_action(tree: Tree, b: int, node: int, q_low: float, q_scale: float, params: Params) -> tuple[int, bool]:
    """Best action at ``node`` of tree ``b`` (-1 when none is selectable) and whether any valid edge was pending.

    ``Qn = (Q - q_low) * q_scale``: the min-max normalisation, or the identity (0, 1) before the
    tree has seen two different Q values. ``params.exploration[N] = c(N) * sqrt(N)``.
    """
    exploration = params.exploration[tree.node_visits[b, node] + tree.node_virtual[b, node]]
    best, best_score, pending = -1, -np.inf, False
    for a in range(tree.children_index.shape[2]):
        if not tree.children_valid[b, node, a]:
            continue
        child = tree.children_index[b, node, a]
        if child == PENDING:
            pending = True
            continue
        if child == UNVISITED:
            visits = 0
            q = params.fpu_value
        else:
            visits = tree.node_visits[b, child] + tree.node_virtual[b, child]
            value = (tree.node_value_sum[b, child] - params.virtual_loss * tree.node_virtual[b, child]) / visits
            q = tree.children_reward[b, node, a] + params.discount * value
        score = (q - q_low) * q_scale + exploration * tree.children_prior[b, node, a] / (1.0 + visits)
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
def select_leaves(tree: Tree, leaves: Leaves, width: int, params: Params) -> int:
    """Descend ``width`` times from the root of every tree; fill ``leaves`` and return M, the expansions.

    Per descent ``[b, l]`` (l < width): ``leaves.node`` is where it stopped (the parent of the new
    node for EXPAND), ``leaves.kind`` is EXPAND / EXISTING / COLLISION / FULL, ``leaves.slot`` its
    row m in the expansion list. Per expansion m < M: ``leaves.exp_tree``, ``exp_parent``,
    ``exp_action`` and ``exp_node`` (the index the new node will get). Every node passed gets a
    virtual visit, and the chosen edge becomes PENDING, until :func:`backup`.
    ``params.exploration`` must cover every node's visits plus ``width``.
    """
    batch = leaves.node.shape[0]
    capacity = tree.node_visits.shape[1]
    scratch = np.empty((3, tree.children_index.shape[2]), np.float64)  # the Gumbel rules' work space
    m = 0
    for b in range(batch):
        if params.q_high > params.q_low:  # the value scale's known bounds (NaN compares False: min-max)
            q_low, q_scale = params.q_low, 1.0 / (params.q_high - params.q_low)
        elif tree.q_max[b] > tree.q_min[b]:
            q_low, q_scale = tree.q_min[b], 1.0 / (tree.q_max[b] - tree.q_min[b])
        else:
            q_low, q_scale = 0.0, 1.0
        scheduled = 0
        for l in range(width):
            node = ROOT_INDEX
            tree.node_virtual[b, node] += 1
            leaves.slot[b, l] = -1
            while True:
                if tree.node_terminal[b, node] or tree.node_depth[b, node] >= params.max_search_depth:
                    leaves.kind[b, l] = EXISTING
                    break
                if params.rule == PUCT:
                    action, pending = _select_action(tree, b, node, q_low, q_scale, params)
                elif node == ROOT_INDEX:
                    action, pending = select_root(tree, b, params, scratch)
                else:
                    action, pending = select_interior(tree, b, node, params, scratch)
                if action < 0:
                    leaves.kind[b, l] = COLLISION if pending else EXISTING
                    break
                child = tree.children_index[b, node, action]
                if child == UNVISITED:
                    if tree.num_nodes[b] + scheduled >= capacity:
                        leaves.kind[b, l] = FULL
                        break
                    tree.children_index[b, node, action] = PENDING
                    leaves.kind[b, l] = EXPAND
                    leaves.slot[b, l] = m
                    leaves.exp_tree[m] = b
                    leaves.exp_parent[m] = node
                    leaves.exp_action[m] = action
                    leaves.exp_node[m] = tree.num_nodes[b] + scheduled
                    scheduled += 1
                    m += 1
                    break
                node = child
                tree.node_virtual[b, node] += 1
            leaves.node[b, l] = node
    return m


@njit(cache=True)
def backup(tree: Tree, leaves: Leaves, width: int, new: NewNodes, reward: np.ndarray, params: Params) -> None:
    """Create the M new nodes from ``new`` and ``reward`` ([M] float64) and back up every descent.

    Row m of ``new`` / ``reward`` is expansion m of ``leaves`` (``reward[m]`` is r(s, a) of its
    edge). The return backed up through an edge is ``r(s, a) + discount * G``, starting from the
    new node's value (0 when terminal: its reward already sits on the edge) or the existing leaf's
    own value. The round's virtual visits are removed first.
    """
    batch = leaves.node.shape[0]
    discount = params.discount
    for b in range(batch):
        for l in range(width):
            node = leaves.node[b, l]
            walk = node
            while walk != NO_PARENT:
                tree.node_virtual[b, walk] -= 1
                walk = tree.node_parent[b, walk]
            kind = leaves.kind[b, l]
            if kind == COLLISION or kind == FULL:  # noqa: SIM109 (numba: plain comparisons)
                continue
            if kind == EXPAND:
                m = leaves.slot[b, l]
                child = leaves.exp_node[m]
                action = leaves.exp_action[m]
                tree.num_nodes[b] = max(tree.num_nodes[b], child + 1)
                tree.children_index[b, node, action] = child
                tree.children_reward[b, node, action] = reward[m]
                tree.node_parent[b, child] = node
                tree.node_action[b, child] = action
                tree.node_depth[b, child] = tree.node_depth[b, node] + 1
                tree.node_terminal[b, child] = new.terminal[m]
                for a in range(tree.children_prior.shape[2]):
                    tree.children_prior[b, child, a] = new.prior[m, a]
                    tree.children_valid[b, child, a] = new.valid[m, a] and not new.terminal[m]
                tree.node_raw_value[b, child] = 0.0 if new.terminal[m] else new.value[m]
            else:
                child = node
            ret = tree.node_raw_value[b, child]
            tree.node_visits[b, child] += 1
            tree.node_value_sum[b, child] += ret
            while tree.node_parent[b, child] != NO_PARENT:
                parent = tree.node_parent[b, child]
                action = tree.node_action[b, child]
                edge_reward = tree.children_reward[b, parent, action]
                q = edge_reward + discount * tree.node_value_sum[b, child] / tree.node_visits[b, child]
                tree.q_min[b] = min(tree.q_min[b], q)
                tree.q_max[b] = max(tree.q_max[b], q)
                ret = edge_reward + discount * ret
                tree.node_visits[b, parent] += 1
                tree.node_value_sum[b, parent] += ret
                child = parent


def backup_and_select(
    tree: Tree,
    leaves: Leaves,
    params: Params,
    *,
    backup_width: int,
    new: NewNodes,
    reward: np.ndarray,
    select_width: int,
) -> int:
    """One simulation round's tree work, for the driver: :func:`backup` the ``backup_width`` descents
    of the previous round (0 on the first), then :func:`select_leaves` ``select_width`` new ones
    (0 after the last). Returns M of the new round.

    The same as calling the two kernels in turn, at about a third of the call overhead, which is
    most of the tree's time in small searches: numba's dispatcher types a NamedTuple argument from
    its class and field names on every call (about 0.1 us a field), so here the fields cross into
    compiled code as plain tuples, typed at a fraction of that cost, and get their names back inside.
    """
    return _backup_and_select(tuple(tree), tuple(leaves), tuple(params), backup_width, tuple(new), reward, select_width)


@njit(cache=True)
def _backup_and_select(tree_fields, leaves_fields, params_fields, backup_width, new_fields, reward, select_width):
    """:func:`backup_and_select` on plain tuples of the NamedTuples' fields, in field order."""
    tree, leaves, params = Tree(*tree_fields), Leaves(*leaves_fields), Params(*params_fields)
    if backup_width > 0:
        backup(tree, leaves, backup_width, NewNodes(*new_fields), reward, params)
    if select_width == 0:
        return 0
    return select_leaves(tree, leaves, select_width, params)


@njit(cache=True)
def init_roots(tree: Tree, roots: NewNodes) -> None:
    """Create node 0 of every tree from row b of ``roots`` (a :class:`NewNodes` of B rows).

    The root gets one visit worth its value estimate (0 when terminal), its priors and action mask.
    """
    for b in range(tree.node_visits.shape[0]):
        value = 0.0 if roots.terminal[b] else roots.value[b]
        tree.node_visits[b, ROOT_INDEX] = 1
        tree.node_value_sum[b, ROOT_INDEX] = value
        tree.node_raw_value[b, ROOT_INDEX] = value
        tree.node_terminal[b, ROOT_INDEX] = roots.terminal[b]
        for a in range(tree.children_prior.shape[2]):
            tree.children_prior[b, ROOT_INDEX, a] = roots.prior[b, a]
            tree.children_valid[b, ROOT_INDEX, a] = roots.valid[b, a] and not roots.terminal[b]
        tree.num_nodes[b] = 1


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
def copy_subtree(src: Tree, src_row: int, new_root: int, dst: Tree, dst_row: int) -> tuple[np.ndarray, int]:
    """Copy the subtree under node ``new_root`` of tree ``src_row`` of ``src`` into empty tree ``dst_row`` of ``dst``.

    Breadth first, ``new_root`` becoming node 0; sets ``dst.num_nodes[dst_row]``. Copies visits,
    values, priors, rewards, masks and terminal flags; depths are recomputed from the new root and
    virtual visits stay 0 (``q_min`` / ``q_max`` are left to the caller). Returns ``old_to_new``
    ([N_src] int32, -1 for nodes dropped) and the number of nodes copied; raises when the
    destination is too small.
    """
    n_src = src.node_visits.shape[1]
    k = src.children_index.shape[2]
    s, d = src_row, dst_row
    old_to_new = np.full(n_src, -1, np.int32)
    queue = np.empty(n_src, np.int32)
    queue[0] = new_root
    old_to_new[new_root] = 0
    head, tail = 0, 1
    while head < tail:
        old = queue[head]
        new = old_to_new[old]
        if new >= dst.node_visits.shape[1]:
            raise ValueError("subtree larger than the destination tree")
        dst.node_visits[d, new] = src.node_visits[s, old]
        dst.node_value_sum[d, new] = src.node_value_sum[s, old]
        dst.node_raw_value[d, new] = src.node_raw_value[s, old]
        dst.node_terminal[d, new] = src.node_terminal[s, old]
        if head == 0:
            dst.node_parent[d, new] = NO_PARENT
            dst.node_action[d, new] = -1
            dst.node_depth[d, new] = 0
        else:
            dst.node_parent[d, new] = old_to_new[src.node_parent[s, old]]
            dst.node_action[d, new] = src.node_action[s, old]
            dst.node_depth[d, new] = dst.node_depth[d, dst.node_parent[d, new]] + 1
        for a in range(k):
            dst.children_prior[d, new, a] = src.children_prior[s, old, a]
            dst.children_reward[d, new, a] = src.children_reward[s, old, a]
            dst.children_valid[d, new, a] = src.children_valid[s, old, a]
            child = src.children_index[s, old, a]
            if child >= 0:
                old_to_new[child] = tail
                queue[tail] = child
                tail += 1
                dst.children_index[d, new, a] = old_to_new[child]
            else:
                dst.children_index[d, new, a] = UNVISITED
        head += 1
    dst.num_nodes[d] = tail
    return old_to_new, tail
