"""A plain-Python, object-per-node implementation of the same search, for checking the kernels.

Written for clarity, not speed: it follows the conventions in agents/mcts/kernels.py step by step
(same PUCT score, normalisation, first-play urgency, virtual loss, tie-breaking and backup order).
"""

from __future__ import annotations

import math

import numpy as np


class Node:
    def __init__(self, state, prior, valid, value, terminal, depth, parent=None, action=-1, reward=0.0):
        self.state = state
        self.prior = [float(p) for p in np.asarray(prior, np.float32)]
        self.valid = [bool(v) and not terminal for v in valid]
        self.raw_value = 0.0 if terminal else float(value)
        self.terminal = bool(terminal)
        self.depth = depth
        self.parent = parent
        self.action = action
        self.reward = float(reward)  # r(parent, action)
        self.children: dict[int, Node] = {}
        self.pending: set[int] = set()
        self.visits = 0
        self.value_sum = 0.0
        self.virtual = 0


class ReferenceSearch:
    def __init__(
        self,
        *,
        num_simulations,
        c_puct=1.25,
        pb_c_base=19652.0,
        fpu_value=0.0,
        discount=1.0,
        dirichlet_alpha=0.3,
        dirichlet_fraction=0.25,
        leaves_per_round=1,
        virtual_loss=1.0,
        max_search_depth=64,
    ):
        self.num_simulations = num_simulations
        self.c_puct = c_puct
        self.pb_c_base = pb_c_base
        self.fpu_value = fpu_value
        self.discount = discount
        self.alpha = dirichlet_alpha
        self.fraction = dirichlet_fraction
        self.leaves = leaves_per_round
        self.virtual_loss = virtual_loss
        self.max_search_depth = max_search_depth
        self.q_min: list[float] = []
        self.q_max: list[float] = []

    # -- building --------------------------------------------------------------------------------

    def new_roots(self, model, roots, rng):
        e = model.evaluate(roots)
        prior = np.asarray(e.prior, np.float32)
        if self.fraction:
            gamma = rng.gamma(self.alpha, size=prior.shape) * e.valid
            total = gamma.sum(axis=1, keepdims=True)
            noise = np.divide(gamma, total, out=np.zeros_like(gamma), where=total > 0)
            prior = ((1 - self.fraction) * prior + self.fraction * noise).astype(np.float32)
        trees = []
        for b in range(len(roots)):
            root = Node(roots[b], prior[b], e.valid[b], e.value[b], e.terminal[b], 0)
            root.visits, root.value_sum = 1, root.raw_value
            trees.append(root)
        self.q_min = [math.inf] * len(roots)
        self.q_max = [-math.inf] * len(roots)
        return trees

    # -- one search --------------------------------------------------------------------------------

    def run(self, model, trees):
        done = 0
        while done < self.num_simulations:
            width = min(self.leaves, self.num_simulations - done)
            plans = [[self._descend(b, root) for _ in range(width)] for b, root in enumerate(trees)]
            expand = [(b, l) for b in range(len(trees)) for l in range(width) if plans[b][l][0] == "expand"]
            if expand:
                parents = np.empty(len(expand), dtype=object)
                parents[:] = [plans[b][l][1].state for b, l in expand]
                step = model.step(parents, np.array([plans[b][l][2] for b, l in expand]))
                results = {key: i for i, key in enumerate(expand)}
            for b in range(len(trees)):
                for l in range(width):
                    kind, node, action = plans[b][l]
                    walk = node
                    while walk is not None:
                        walk.virtual -= 1
                        walk = walk.parent
                    if kind == "collision":
                        continue
                    if kind == "expand":
                        i = results[(b, l)]
                        x = step.expansion
                        child = Node(
                            step.states[i],
                            x.prior[i],
                            x.valid[i],
                            x.value[i],
                            x.terminal[i],
                            node.depth + 1,
                            node,
                            action,
                            step.reward[i],
                        )
                        node.pending.discard(action)
                        node.children[action] = child
                    else:
                        child = node
                    self._backup(b, child)
            done += width
        return trees

    def _score(self, b, node, action):
        parent_visits = node.visits + node.virtual
        c = self.c_puct
        if self.pb_c_base is not None:
            c += math.log((parent_visits + self.pb_c_base + 1.0) / self.pb_c_base)
        exploration = c * math.sqrt(parent_visits)
        child = node.children.get(action)
        if child is None:
            visits, q = 0, self.fpu_value
        else:
            visits = child.visits + child.virtual
            q = child.reward + self.discount * ((child.value_sum - self.virtual_loss * child.virtual) / visits)
        qn = (q - self.q_min[b]) / (self.q_max[b] - self.q_min[b]) if self.q_max[b] > self.q_min[b] else q
        return qn + exploration * node.prior[action] / (1.0 + visits)

    def _choose(self, b, node, options):
        scores = [self._score(b, node, a) for a in options]
        return options[scores.index(max(scores))]  # first maximum: lowest index wins ties

    def _descend(self, b, root):
        node = root
        node.virtual += 1
        while True:
            if node.terminal or node.depth >= self.max_search_depth:
                return ("existing", node, -1)
            options = [a for a in range(len(node.valid)) if node.valid[a] and a not in node.pending]
            if not options:
                pending = any(node.valid[a] for a in node.pending)
                return ("collision" if pending else "existing", node, -1)
            action = self._choose(b, node, options)
            if action is None:  # a Gumbel rule found no action it may take: nothing to expand this time
                pending = any(node.valid[a] for a in node.pending)
                return ("collision" if pending else "existing", node, -1)
            if action not in node.children:
                node.pending.add(action)
                return ("expand", node, action)
            node = node.children[action]
            node.virtual += 1

    def _backup(self, b, node):
        ret = node.raw_value
        node.visits += 1
        node.value_sum += ret
        while node.parent is not None:
            q = node.reward + self.discount * node.value_sum / node.visits
            self.q_min[b] = min(self.q_min[b], q)
            self.q_max[b] = max(self.q_max[b], q)
            ret = node.reward + self.discount * ret
            node = node.parent
            node.visits += 1
            node.value_sum += ret


def root_visits(trees, num_actions):
    return np.array([[t.children[a].visits if a in t.children else 0 for a in range(num_actions)] for t in trees])


def root_q(trees, num_actions, discount=1.0):
    return np.array(
        [
            [
                t.children[a].reward + discount * (t.children[a].value_sum / t.children[a].visits)
                if a in t.children
                else np.nan
                for a in range(num_actions)
            ]
            for t in trees
        ]
    )


def count_nodes(node):
    return 1 + sum(count_nodes(c) for c in node.children.values())


def max_depth(node):
    return max([node.depth] + [max_depth(c) for c in node.children.values()])


def reroot(search, trees, nodes, rng):
    """Keep the subtree under ``nodes[b]`` (a node object of tree b) as the new root, as the engine does."""
    out = []
    for node in nodes:
        node.parent, node.action = None, -1
        shift = node.depth
        stack = [node]
        while stack:
            n = stack.pop()
            n.depth -= shift
            stack.extend(n.children.values())
        out.append(node)
    if search.fraction:
        prior = np.array([n.prior for n in out], np.float32)
        valid = np.array([n.valid for n in out])
        gamma = rng.gamma(search.alpha, size=prior.shape) * valid
        total = gamma.sum(axis=1, keepdims=True)
        noise = np.divide(gamma, total, out=np.zeros_like(gamma), where=total > 0)
        prior = ((1 - search.fraction) * prior + search.fraction * noise).astype(np.float32)
        for n, p in zip(out, prior, strict=True):
            n.prior = [float(x) for x in p]
    return out


# -- Gumbel MuZero (mctx's gumbel_muzero_policy), written from the paper's formulas ---------------------


def seq_halving_visits(max_considered, num_simulations):
    """mctx ``seq_halving.get_sequence_of_considered_visits``, line for line."""
    if max_considered <= 1:
        return list(range(num_simulations))
    log2max = int(math.ceil(math.log2(max_considered)))
    sequence, visits, num_considered = [], [0] * max_considered, max_considered
    while len(sequence) < num_simulations:
        extra = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(extra):
            sequence.extend(visits[:num_considered])
            visits[:num_considered] = [v + 1 for v in visits[:num_considered]]
        num_considered = max(2, num_considered // 2)
    return sequence[:num_simulations]


class ReferenceGumbelSearch(ReferenceSearch):
    """Gumbel MuZero: Sequential Halving with Gumbel at the root, the deterministic rule below it.

    ``gumbel`` ([B, K]) is the root noise, already scaled. With several descents per round a child's
    visit count includes descents in flight (an edge pending expansion counts one), as the engine's does.
    """

    def __init__(self, *, gumbel, num_simulations, max_considered_actions=16, c_visit=50.0, c_scale=0.1, **settings):
        super().__init__(num_simulations=num_simulations, dirichlet_fraction=0.0, **settings)
        self.gumbel = np.asarray(gumbel, np.float64)
        self.max_considered = max_considered_actions
        self.c_visit, self.c_scale = c_visit, c_scale

    def visits(self, node, a):
        if a in node.children:
            return node.children[a].visits + node.children[a].virtual
        return 1 if a in node.pending else 0

    def completed(self, node):
        """{valid a: (sigma(completed Q)(a), N(a), logit(a))} at ``node``."""
        valid = [a for a in range(len(node.valid)) if node.valid[a]]
        total = sum(node.prior[a] for a in valid)
        prob = {a: node.prior[a] / total if total > 0 else 1.0 / len(valid) for a in valid}
        q = {}
        for a in valid:
            if a in node.children:
                c = node.children[a]
                n = c.visits + c.virtual
                q[a] = c.reward + self.discount * ((c.value_sum - self.virtual_loss * c.virtual) / n)
        floor = float(np.finfo(np.float32).tiny)
        sum_n = sum(self.visits(node, a) for a in q)
        mixed = node.raw_value
        if sum_n > 0:
            weight = sum(max(prob[a], floor) for a in q)
            mixed = (mixed + sum_n * (sum(max(prob[a], floor) * q[a] for a in q) / weight)) / (sum_n + 1.0)
        done = {a: q.get(a, mixed) for a in valid}
        low, high = min(done.values()), max(done.values())
        scale = (self.c_visit + max(self.visits(node, a) for a in valid)) * self.c_scale
        return {
            a: (
                (done[a] - low) / max(high - low, 1e-8) * scale,
                self.visits(node, a),
                math.log(prob[a]) if prob[a] > 0 else -1e9,
            )
            for a in valid
        }

    def improved_policy(self, node):
        """softmax(logit + sigma(completed Q)) over the valid actions, as a {a: probability} dict."""
        terms = {a: logit + sigma for a, (sigma, _, logit) in self.completed(node).items()}
        top = max(terms.values())
        z = sum(math.exp(t - top) for t in terms.values())
        return {a: math.exp(t - top) / z for a, t in terms.items()}

    def root_score(self, b, node, a, table_visit, info):
        sigma, n, logit = info[a]
        if n != table_visit:
            return -math.inf
        top = max(v[2] for v in info.values())
        return max(-1e9, self.gumbel[b, a] + logit - top + sigma)

    def _choose(self, b, node, options):
        info = self.completed(node)
        if node.parent is None:  # the root: Sequential Halving with Gumbel
            considered = min(self.max_considered, len(info))
            table = seq_halving_visits(considered, self.num_simulations)
            target = table[min(sum(v[1] for v in info.values()), len(table) - 1)]
            scores = [self.root_score(b, node, a, target, info) for a in options]
            best = max(scores)
            return options[scores.index(best)] if best > -math.inf else None
        policy = self.improved_policy(node)
        total = sum(v[1] for v in info.values())
        scores = [policy[a] - info[a][1] / (1.0 + total) for a in options]
        return options[scores.index(max(scores))]

    def outcome(self, trees, num_actions):
        """[B, K] improved policy and [B] selected action at each root (zeros and -1 where none)."""
        policy = np.zeros((len(trees), num_actions))
        action = np.full(len(trees), -1)
        for b, root in enumerate(trees):
            if not any(root.valid):
                continue
            for a, p in self.improved_policy(root).items():
                policy[b, a] = p
            info = self.completed(root)
            most = max(v[1] for v in info.values())
            scores = {a: self.root_score(b, root, a, most, info) for a in info}
            action[b] = max(sorted(scores), key=lambda a: scores[a])  # first maximum
        return policy, action
