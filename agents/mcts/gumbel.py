"""Gumbel MuZero's action selection (Danihelka et al., ICLR 2022), as mctx's ``gumbel_muzero_policy`` does it.

Symbols (per node s of tree b): N(a) visits of the child behind action a, P(a) its prior (normalised over the
valid actions), logit(a) = log P(a), Q(a) = r(s, a) + discount * V(child), V_raw(s) the value estimate made
when s was created, g(a) the root's Gumbel noise (already scaled by ``gumbel_scale``), m the root's
considered actions (``max_considered_actions``, at most the valid actions)::

    v_mix        = (V_raw(s) + sum_b N(b) * sum_{N(b)>0} P(b) Q(b) / sum_{N(b)>0} P(b)) / (sum_b N(b) + 1)
    completed(a) = Q(a) if the child exists else v_mix, then min-max rescaled to [0, 1] over the valid actions
                   (or, with fixed bounds ``--q-bounds fixed``, by the value scale's [-1, 1]: (Q + 1) / 2)
    sigma(q)     = (c_visit + max_b N(b)) * c_scale * q
    pi'(a)       = softmax(logit + sigma(completed))(a)                 the improved policy (the policy target)

- Root: Sequential Halving with Gumbel. Simulation i may only pick an action whose N equals
  ``considered_visits[m, i]`` (:func:`considered_visits`, mctx ``seq_halving``), and picks the best of those by
  ``max(-1e9, g + logit - max(logit) + sigma(completed))``. The first m simulations thus visit the top m of
  ``g + logit`` (Gumbel-top-k: m actions sampled without replacement from the prior), and each halving keeps
  the better half by ``g + logit + sigma(completed)``.
- Below the root: mctx's deterministic rule ``argmax_a pi'(a) - N(a) / (1 + sum_b N(b))``, which makes the
  visit frequencies follow pi' (Full Gumbel MuZero, section 5 of the paper). It is used instead of PUCT
  because the paper's policy-improvement argument covers it, it needs no first-play value or min-max
  bounds, and it is deterministic, so the plain-Python reference reproduces it visit for visit.
- Acting (:func:`root_outcome`): the same root score, over the most visited actions.

Ties go to the lowest action index. Departures from mctx, none of which changes a search with one descent
per round on a tree whose valid actions have nonzero priors: masked actions take no part in the min-max
rescaling or the softmax (mctx masks only at the root and keeps masked slots at the mixed value); with
several descents per round (``leaves_per_round > 1``) N(a) counts the descents in flight (a PENDING edge
counts 1, virtual visits count) and Q(a) carries the virtual loss as PUCT's does; an edge PENDING for
expansion cannot be chosen again in the round (a collision, as with PUCT).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from agents.mcts.tree import PENDING, ROOT_INDEX, Tree

LOW_LOGIT = -1e9  # mctx's floor of a root score (keeps a zero-prior action selectable when it is the only one)
PRIOR_FLOOR = float(np.finfo(np.float32).tiny)  # mctx's floor of a prior weight in the mixed value
RESCALE_EPSILON = 1e-8  # smallest max - min of the completed Q values that rescaling divides by


def considered_visits(max_considered: int, num_simulations: int) -> np.ndarray:
    """[max_considered + 1, num_simulations] int32: row m is the visit count each simulation must pick with
    m considered actions (mctx ``seq_halving.get_table_of_considered_visits``).

    >>> considered_visits(4, 8)[4].tolist()
    [0, 0, 0, 0, 1, 1, 2, 2]
    >>> considered_visits(1, 3)[1].tolist()
    [0, 1, 2]
    """
    table = np.zeros((max_considered + 1, num_simulations), np.int32)
    for m in range(max_considered + 1):
        if m <= 1:
            table[m] = np.arange(num_simulations)
            continue
        log2max = int(math.ceil(math.log2(m)))
        sequence: list[int] = []
        visits = [0] * m
        num_considered = m
        while len(sequence) < num_simulations:
            num_extra_visits = max(1, int(num_simulations / (log2max * num_considered)))
            for _ in range(num_extra_visits):
                sequence.extend(visits[:num_considered])
                for i in range(num_considered):
                    visits[i] += 1
            num_considered = max(2, num_considered // 2)
        table[m] = sequence[:num_simulations]
    return table


@njit(cache=True)
def completed_q(tree: Tree, b, node, params, scratch) -> None:
    """Fill ``scratch`` ([3, K] float64) for ``node`` of tree ``b``: row 0 sigma(completed Q), row 1 N(a)
    (in flight included), row 2 logit(a); -inf logits and zeros on masked actions. ``params`` is a
    :class:`~agents.mcts.kernels.Params` (its discount, virtual_loss, c_visit and c_scale are read)."""
    discount, virtual_loss = params.discount, params.virtual_loss
    sigma, visits, logits = scratch[0], scratch[1], scratch[2]
    k = tree.children_index.shape[2]
    total_prior, num_valid = 0.0, 0
    for a in range(k):
        if tree.children_valid[b, node, a]:
            total_prior += tree.children_prior[b, node, a]
            num_valid += 1
    sum_visits, sum_prior, weighted = 0.0, 0.0, 0.0
    for a in range(k):
        sigma[a], visits[a], logits[a] = 0.0, 0.0, -np.inf
        if not tree.children_valid[b, node, a]:
            continue
        p = tree.children_prior[b, node, a] / total_prior if total_prior > 0 else 1.0 / num_valid
        logits[a] = math.log(p) if p > 0 else LOW_LOGIT
        child = tree.children_index[b, node, a]
        if child >= 0:
            n = tree.node_visits[b, child] + tree.node_virtual[b, child]
            value = (tree.node_value_sum[b, child] - virtual_loss * tree.node_virtual[b, child]) / n
            sigma[a] = tree.children_reward[b, node, a] + discount * value
            visits[a] = n
            sum_visits += n
            sum_prior += max(p, PRIOR_FLOOR)
            weighted += max(p, PRIOR_FLOOR) * sigma[a]
        elif child == PENDING:
            visits[a] = 1.0
    mixed = tree.node_raw_value[b, node]
    if sum_visits > 0:
        mixed = (mixed + sum_visits * (weighted / sum_prior)) / (sum_visits + 1.0)
    low, high, most = np.inf, -np.inf, 0.0
    for a in range(k):
        if not tree.children_valid[b, node, a]:
            continue
        if tree.children_index[b, node, a] < 0:
            sigma[a] = mixed
        low, high, most = min(low, sigma[a]), max(high, sigma[a]), max(most, visits[a])
    if params.q_high > params.q_low:  # fixed bounds: a 0.05 difference stays 0.05 / (q_high - q_low) of the range
        low, high = params.q_low, params.q_high
    scale = (params.c_visit + most) * params.c_scale
    for a in range(k):
        if tree.children_valid[b, node, a]:
            sigma[a] = (sigma[a] - low) / max(high - low, RESCALE_EPSILON) * scale


@njit(cache=True)
def select_root(tree: Tree, b, params, scratch) -> tuple[int, bool]:
    """Sequential Halving with Gumbel at the root of tree ``b``: the action (-1 when none can be chosen) and
    whether a valid edge was pending. Reads ``params.gumbel`` and ``params.considered_visits``."""
    completed_q(tree, b, ROOT_INDEX, params, scratch)
    gumbel, table = params.gumbel, params.considered_visits
    sigma, visits, logits = scratch[0], scratch[1], scratch[2]
    k = tree.children_index.shape[2]
    num_valid, simulation, top = 0, 0, -np.inf
    for a in range(k):
        if tree.children_valid[b, ROOT_INDEX, a]:
            num_valid += 1
            simulation += int(visits[a])
            top = max(top, logits[a])
    target = table[min(table.shape[0] - 1, num_valid), min(simulation, table.shape[1] - 1)]
    best, best_score, pending = -1, -np.inf, False
    for a in range(k):
        if not tree.children_valid[b, ROOT_INDEX, a]:
            continue
        if tree.children_index[b, ROOT_INDEX, a] == PENDING:
            pending = True
            continue
        if visits[a] != target:
            continue
        score = max(LOW_LOGIT, gumbel[b, a] + logits[a] - top + sigma[a])
        if score > best_score:
            best, best_score = a, score
    return best, pending


@njit(cache=True)
def select_interior(tree: Tree, b, node, params, scratch) -> tuple[int, bool]:
    """mctx's deterministic rule at ``node`` of tree ``b``: argmax of pi'(a) - N(a) / (1 + sum N); the action
    (-1 when none can be chosen) and whether a valid edge was pending."""
    completed_q(tree, b, node, params, scratch)
    sigma, visits, logits = scratch[0], scratch[1], scratch[2]
    k = tree.children_index.shape[2]
    top, total, sum_visits = -np.inf, 0.0, 0.0
    for a in range(k):
        if tree.children_valid[b, node, a]:
            top = max(top, logits[a] + sigma[a])
            sum_visits += visits[a]
    for a in range(k):
        if tree.children_valid[b, node, a]:
            total += math.exp(logits[a] + sigma[a] - top)
    best, best_score, pending = -1, -np.inf, False
    for a in range(k):
        if not tree.children_valid[b, node, a]:
            continue
        if tree.children_index[b, node, a] == PENDING:
            pending = True
            continue
        score = math.exp(logits[a] + sigma[a] - top) / total - visits[a] / (1.0 + sum_visits)
        if score > best_score:
            best, best_score = a, score
    return best, pending


@njit(cache=True)
def root_outcome(tree: Tree, params):
    """After the search: ([B, K] float64 the improved policy pi' at each root, [B] int32 the selected action,
    the argmax of ``g + logit + sigma(completed Q)`` over the most visited actions). A terminal root, or one
    with no valid action, gets zeros and -1."""
    batch, k = tree.children_index.shape[0], tree.children_index.shape[2]
    gumbel = params.gumbel
    improved = np.zeros((batch, k), np.float64)
    action = np.full(batch, -1, np.int32)
    scratch = np.empty((3, k), np.float64)
    for b in range(batch):
        if tree.node_terminal[b, ROOT_INDEX] or not tree.children_valid[b, ROOT_INDEX].any():
            continue
        completed_q(tree, b, ROOT_INDEX, params, scratch)
        sigma, visits, logits = scratch[0], scratch[1], scratch[2]
        top, top_logit, most, total = -np.inf, -np.inf, 0.0, 0.0
        for a in range(k):
            if tree.children_valid[b, ROOT_INDEX, a]:
                top = max(top, logits[a] + sigma[a])
                top_logit = max(top_logit, logits[a])
                most = max(most, visits[a])
        for a in range(k):
            if tree.children_valid[b, ROOT_INDEX, a]:
                improved[b, a] = math.exp(logits[a] + sigma[a] - top)
                total += improved[b, a]
        best_score = -np.inf
        for a in range(k):
            if tree.children_valid[b, ROOT_INDEX, a]:
                improved[b, a] /= total
                if visits[a] == most:
                    score = max(LOW_LOGIT, gumbel[b, a] + logits[a] - top_logit + sigma[a])
                    if score > best_score:
                        action[b], best_score = a, score
    return improved, action
