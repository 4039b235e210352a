"""Tree self-play: the search tree itself becomes the training data.

One PUCT search per problem (B problems' trees in lockstep, the teachers' priors and candidates as
in move-by-move play) decides which nodes to expand. Every node is rolled out once by the student
to a graded end when it is created (one batched ``generate`` per search round), so each node
carries one complete response, and a node's value is the mean outcome of the responses in its
subtree (Monte Carlo, as VinePPO and TreeRL use; the learned value head can be mixed into the leaf
values the search backs up, ``value_weight``). Each response becomes a learner sample whose tokens
carry the advantage of the step they belong to (TreeRL, arXiv 2506.11902):

    A(s) = (V(s) - V(parent(s)) + V(s) - V(root)) / sqrt(|L(s)|)

with ``L(s)`` the responses below ``s``; the rollout after a node counts as a leaf of its own
(``|L| = 1``, its value its outcome). So every token of every node the search expanded is in some
loss term, each sibling is judged against its siblings' parent, and the value head is trained on
the tree's Monte Carlo values instead of one episode's outcome.

Off-policy teacher steps. A node's step was written under a teacher prompt ("continue correctly" /
"make a plausible mistake"), not under the solve prompt the student is trained on. It is trained
like the student's own tokens, with the PPO ratio measured from the student's log-probs at the
first step that trained it (``Learner._old``), so each update is clipped: a step with a positive
advantage is an advantage-weighted imitation of a verified-better teacher step (AlphaMath,
ReST-MCTS*), one with a negative advantage is pushed down within the clip. No importance ratio
against the teacher prompt is taken: the student under the solve prompt is the policy being
improved, and the teacher prompts are a proposal distribution (its ratio would be unbounded).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from agents.alphazero.selfplay import SelfPlayStats
from agents.mcts.agent import NOISE_SALT
from agents.mcts.env_model import EnvSearchModel
from agents.mcts.search import MCTS, SearchConfig, SearchResult
from agents.mcts.tree import NO_PARENT, ROOT_INDEX
from agents.policy import ValueFn, base_seed, state_rng
from agents.training.replay import Episode, StepRecord
from azgym.env import EnvState, ReasoningEnv

ROLLOUT_SEED_SALT = 7919  # separates a node's rollout seed from its episode seed


@dataclass(frozen=True)
class Ending:
    """A complete response of a node: the node's own end (terminal) or its rollout, graded."""

    token_ids: tuple[int, ...]  # the whole response, the node's and its rollout's tokens
    value: float  # the outcome on the value scale (+1 solved, -1 not; partial credit in between)
    correct: bool
    format_ok: bool
    solved: bool
    truncated: bool  # the rollout ran out of tokens before it ended


def judge(env: ReasoningEnv, state: EnvState, token_ids: tuple[int, ...], truncated: bool) -> Ending:
    """Grade a complete response of ``state``'s problem (training only: the grader sees the gold answer)."""
    judgement = env.judge(state, token_ids)
    grade = judgement.grade
    return Ending(
        tuple(token_ids), judgement.outcome, bool(grade.correct), bool(grade.format_ok), judgement.solved, truncated
    )


class RolloutValue:
    """A value function that rolls every live state out with the student and grades the end.

    One batched ``generate`` call per search round; each rollout is seeded by its state (the
    episode seed and the response length), so a tree does not depend on what else is in the batch.
    The endings are kept (``endings``, keyed by problem and response) for the training samples, unless
    ``keep_endings`` is False (move-by-move search, ``--leaf-value rollout``, which trains on the played
    path alone). ``generated_tokens`` counts every rollout token. The value returned is
    ``(1 - value_weight) * outcome + value_weight * value_fn(state)``.
    """

    def __init__(
        self,
        lm,
        *,
        value_fn: ValueFn | None = None,
        value_weight: float = 0.0,
        temperature: float = 1.0,
        keep_endings: bool = True,
    ):
        if not 0.0 <= value_weight <= 1.0:
            raise ValueError(f"value_weight must lie in [0, 1], got {value_weight}")
        if value_weight > 0 and value_fn is None:
            raise ValueError("value_weight > 0 needs a value_fn (the student's value head)")
        self.lm = lm
        self.value_fn = value_fn
        self.value_weight = value_weight
        self.temperature = temperature
        self.keep_endings = keep_endings
        self.endings: dict[tuple[int, tuple[int, ...]], Ending] = {}
        self.generated_tokens = 0

    def __call__(self, env: ReasoningEnv, states) -> np.ndarray:
        states = list(states)
        if not states:
            return np.zeros(0, np.float64)
        prompts = [env.solve_prompt(s) + list(s.response_ids) for s in states]
        budgets = [max(1, env.max_tokens - len(s.response_ids)) for s in states]
        seeds = [(s.seed * ROLLOUT_SEED_SALT + len(s.response_ids)) % (2**31 - 1) for s in states]
        generations = self.lm.generate(prompts, max_tokens=budgets, temperature=self.temperature, seed=seeds)
        values = np.zeros(len(states), np.float64)
        for i, (state, (g,)) in enumerate(zip(states, generations, strict=True)):
            self.generated_tokens += len(g.token_ids)
            ending = judge(env, state, state.response_ids + g.token_ids, truncated=g.finish_reason == "length")
            if self.keep_endings:
                self.endings[(state.problem_index, state.response_ids)] = ending
            values[i] = ending.value
        if self.value_weight > 0:
            values = (1 - self.value_weight) * values + self.value_weight * self.value_fn(env, states)
        return values


@dataclass
class TreeStats:
    """What one tree self-play phase measured, beyond :class:`SelfPlayStats`."""

    samples_per_tree: float
    trained_token_fraction: float  # of all tokens generated (candidates + rollouts), those in some sample
    value_rank_accuracy: float  # siblings ordered like their Monte Carlo values by the value head (NaN: none)
    prior_rank_accuracy: float  # ... by the teachers' priors
    sibling_pairs: int
    branching_fraction: float = 1.0  # of the live nodes evaluated, those that offered every candidate


class TreeSelfPlay:
    """Self-play that searches one tree per problem and trains on all of it (see the module docstring).

    Args:
        lm: the student's backend (rolls the nodes out).
        config: the search (``num_simulations`` = nodes expanded per tree).
        value_fn: the student's value head: mixed into leaf values (``value_weight``) and ranked
            against the tree's Monte Carlo values every phase.
        temperature: the rollouts' sampling temperature.
        seed: the search's root noise (with each root state: a tree does not depend on the others).
        branch_entropy: where the tree branches: 0 at every node, else only at nodes whose priors'
            normalised entropy is at least this (elsewhere the most likely step alone; see
            :class:`~agents.mcts.env_model.EnvSearchModel`).
    """

    def __init__(
        self,
        lm,
        config: SearchConfig,
        *,
        value_fn: ValueFn | None = None,
        value_weight: float = 0.0,
        temperature: float = 0.7,
        seed: int | None = None,
        branch_entropy: float = 0.0,
    ):
        self.lm = lm
        self.branch_entropy = branch_entropy
        self.temperature = temperature
        self.mcts = MCTS(config)
        self.value_fn = value_fn
        self.value_weight = value_weight
        self.seed = base_seed(seed)
        self.last_tree_stats: TreeStats | None = None

    def play(
        self,
        env: ReasoningEnv,
        problem_indices: list[int],
        rng: np.random.Generator,
        *,
        iteration: int,
        weights_version: int,
    ) -> tuple[list[Episode], SelfPlayStats]:
        """Search one tree per problem (all in lockstep) and return one episode per tree node."""
        roots = [env.initial_state(p, int(rng.integers(0, 2**31 - 1))) for p in problem_indices]
        return self.play_roots(env, roots, iteration=iteration, weights_version=weights_version)

    def play_roots(
        self, env: ReasoningEnv, roots: list[EnvState], *, iteration: int, weights_version: int
    ) -> tuple[list[Episode], SelfPlayStats]:
        """Search one tree from each root state (all in lockstep); its episodes in root order."""
        start = time.perf_counter()
        rollout = RolloutValue(
            self.lm, value_fn=self.value_fn, value_weight=self.value_weight, temperature=self.temperature
        )
        noise = [state_rng(r, NOISE_SALT, self.seed) for r in roots]
        model = EnvSearchModel(env, rollout, branch_entropy=self.branch_entropy)
        result = self.mcts.search(model, roots, noise)
        episodes, proposed, trained, ranks = [], 0, 0, []
        for b in range(len(roots)):
            ends = node_endings(env, result, b, rollout.endings)
            values, leaves = node_values(result.tree, b, ends)
            tree = TreeData(result, b, ends, values, leaves)
            episodes += episodes_of_tree(env, tree, iteration=iteration, weights_version=weights_version)
            proposed += tree.proposed_tokens(env)
            trained += tree.trained_tokens()
            ranks.append(self._sibling_ranks(env, tree))
            for node, end in enumerate(ends):  # the teachers whose steps the response took are credited
                env.proposer.observe(result.states[b, node].teachers, end.value)
        generated = proposed + rollout.generated_tokens
        pairs = sum(r[2] for r in ranks)
        self.last_tree_stats = TreeStats(
            samples_per_tree=len(episodes) / max(len(roots), 1),
            trained_token_fraction=trained / max(generated, 1),
            value_rank_accuracy=sum(r[0] for r in ranks) / pairs if pairs and self.value_fn else math.nan,
            prior_rank_accuracy=sum(r[1] for r in ranks) / pairs if pairs else math.nan,
            sibling_pairs=pairs,
            branching_fraction=model.branching / max(model.nodes, 1),
        )
        stats = result.stats()
        return episodes, SelfPlayStats(
            episodes=len(episodes),
            moves=int(result.tree.max_depth().max()),
            seconds=time.perf_counter() - start,
            generated_tokens=generated,
            tree_nodes=[stats["num_nodes"]],
            tree_depths=[stats["max_depth"]],
            simulations_per_s=[stats["simulations_per_s"]],
            visit_entropies=[],
            root_values=result.root_value.tolist(),
        )

    def _sibling_ranks(self, env, tree: TreeData) -> tuple[float, float, int]:
        """(value head right, prior right, pairs) over sibling pairs whose Monte Carlo values differ."""
        t, b, mc = tree.result.tree, tree.b, tree.values
        nodes = list(range(1, len(tree.ends)))
        states = [tree.result.states[b, i] for i in nodes]
        head = dict(
            zip(nodes, self.value_fn(env, states) if self.value_fn and nodes else np.zeros(len(nodes)), strict=True)
        )
        right_v = right_p = 0.0
        pairs = 0
        for parent in range(len(tree.ends)):
            kids = [int(c) for c in t.children_index[b, parent] if c >= 0]
            for i, x in enumerate(kids):
                for y in kids[i + 1 :]:
                    if mc[x] == mc[y]:
                        continue
                    better = mc[x] > mc[y]
                    prior_x, prior_y = (t.children_prior[b, parent, t.node_action[b, c]] for c in (x, y))
                    pairs += 1
                    right_v += _agrees(head[x], head[y], better)
                    right_p += _agrees(prior_x, prior_y, better)
        return right_v, right_p, pairs


def merge_tree_stats(parts: list[tuple[TreeStats, int, int]]) -> TreeStats:
    """The stats of several tree self-play phases as one: ``(stats, trees, generated tokens)`` each.

    >>> a, b = TreeStats(2.0, 0.5, 1.0, 1.0, 2), TreeStats(4.0, 1.0, 0.5, 0.0, 2)
    >>> merged = merge_tree_stats([(a, 1, 10), (b, 3, 30)])
    >>> merged.samples_per_tree, merged.trained_token_fraction, merged.value_rank_accuracy, merged.sibling_pairs
    (3.5, 0.875, 0.75, 4)
    """
    trees = sum(n for _, n, _ in parts)
    generated = sum(g for _, _, g in parts)
    pairs = sum(s.sibling_pairs for s, _, _ in parts)

    def by_pairs(name: str) -> float:
        ranked = [(getattr(s, name), s.sibling_pairs) for s, _, _ in parts if s.sibling_pairs]
        finite = ranked and all(math.isfinite(v) for v, _ in ranked)
        return sum(v * n for v, n in ranked) / pairs if finite else math.nan

    return TreeStats(
        samples_per_tree=sum(s.samples_per_tree * n for s, n, _ in parts) / max(trees, 1),
        trained_token_fraction=sum(s.trained_token_fraction * max(g, 1) for s, _, g in parts) / max(generated, 1),
        value_rank_accuracy=by_pairs("value_rank_accuracy"),
        prior_rank_accuracy=by_pairs("prior_rank_accuracy"),
        sibling_pairs=pairs,
        branching_fraction=sum(s.branching_fraction * n for s, n, _ in parts) / max(trees, 1),
    )


def _agrees(score_x: float, score_y: float, x_better: bool) -> float:
    """1 when the scores order x and y as their Monte Carlo values do, 0 when the other way, 1/2 on a tie."""
    return 0.5 if score_x == score_y else float((score_x > score_y) == x_better)


@dataclass
class TreeData:
    """Tree ``b`` of a search with each node's complete response and Monte Carlo value."""

    result: SearchResult
    b: int
    ends: list[Ending]  # per node: its own end or its rollout's
    values: np.ndarray  # per node: mean outcome of the responses in its subtree
    leaves: np.ndarray  # per node: how many responses its subtree holds

    def state(self, node: int) -> EnvState:
        return self.result.states[self.b, node]

    def proposed_tokens(self, env: ReasoningEnv) -> int:
        """Candidate tokens the teachers proposed for the tree's live nodes (cached: no model call)."""
        live = [self.state(n) for n in range(len(self.ends)) if not _ended(self.state(n))]
        return sum(len(c.token_ids) for cands in env.expand(live) for c in cands) if live else 0

    def trained_tokens(self) -> int:
        """Distinct tokens of the tree in some sample: every node's step and every rollout."""
        tree, total = self.result.tree, 0
        for node, end in enumerate(self.ends):
            own = len(self.state(node).response_ids)
            if node != ROOT_INDEX:
                total += own - len(self.state(int(tree.node_parent[self.b, node])).response_ids)
            total += len(end.token_ids) - own
        return total


def _ended(state: EnvState) -> bool:
    return bool(state.terminated or state.truncated)


def node_endings(env: ReasoningEnv, result: SearchResult, b: int, endings: dict) -> list[Ending]:
    """The complete response of every node of tree ``b``: its own end (graded here), or its rollout's."""
    out = []
    for node in range(int(result.tree.num_nodes[b])):
        state = result.states[b, node]
        if _ended(state):
            out.append(judge(env, state, state.response_ids, truncated=bool(state.truncated)))
        else:
            out.append(endings[(state.problem_index, state.response_ids)])
    return out


def node_values(tree, b: int, endings: list[Ending]) -> tuple[np.ndarray, np.ndarray]:
    """(V, |L|): the mean outcome of the responses in each node's subtree and how many there are.

    Children are created after their parents, so one pass from the last node back adds each
    subtree into its parent.
    """
    n = len(endings)
    total = np.array([e.value for e in endings], np.float64)
    count = np.ones(n, np.float64)
    for node in range(n - 1, 0, -1):
        parent = int(tree.node_parent[b, node])
        total[parent] += total[node]
        count[parent] += count[node]
    return total / count, count


def step_advantage(value: float, parent_value: float, root_value: float, leaves: float) -> float:
    """TreeRL's step advantage: local (vs the parent) plus global (vs the root), over sqrt(leaves below).

    >>> step_advantage(1.0, 0.0, -0.5, 4.0)  # (1 - 0 + 1 + 0.5) / 2
    1.25
    """
    return (2 * value - parent_value - root_value) / math.sqrt(leaves)


def episodes_of_tree(env: ReasoningEnv, tree: TreeData, *, iteration: int, weights_version: int) -> list[Episode]:
    """One episode per node: its complete response, each token with the advantage of its step, and
    value targets (the Monte Carlo value) at every node on its path and at the end (the outcome)."""
    t, values, leaves = tree.result.tree, tree.values, tree.leaves
    problem = env.problem(tree.state(ROOT_INDEX))
    prompt_ids = env.solve_prompt(problem)
    episodes = []
    for node, end in enumerate(tree.ends):
        path = _path(t, tree.b, node)
        advantages: list[float] = []
        steps, targets = [], []
        for parent, child in zip(path, path[1:], strict=False):
            before, after = len(tree.state(parent).response_ids), len(tree.state(child).response_ids)
            advantages += [step_advantage(values[child], values[parent], values[ROOT_INDEX], leaves[child])] * (
                after - before
            )
            steps.append(_step_record(env, t, tree.b, parent, tree.state(parent), int(t.node_action[tree.b, child])))
            targets.append([before, float(values[parent])])
        own = len(tree.state(node).response_ids)
        if len(end.token_ids) > own:  # the rollout after the node: a leaf of its own
            advantages += [step_advantage(end.value, values[node], values[ROOT_INDEX], 1.0)] * (
                len(end.token_ids) - own
            )
            targets.append([own, float(values[node])])
        targets.append([len(end.token_ids), end.value])
        if not advantages:  # an empty response (a root that ended at once): nothing to train on
            continue
        episodes.append(
            Episode(
                problem_id=problem.id,
                question=problem.question,
                prompt_ids=prompt_ids,
                response_ids=list(end.token_ids),
                episode_return=end.value,
                correct=end.correct,
                format_ok=end.format_ok,
                solved=end.solved,
                iteration=iteration,
                weights_version=weights_version,
                steps=steps,
                truncated=end.truncated,
                token_advantages=[round(a, 6) for a in advantages],
                value_targets=targets,
            )
        )
    return episodes


def _path(tree, b: int, node: int) -> list[int]:
    path = [node]
    while int(tree.node_parent[b, path[-1]]) != NO_PARENT:
        path.append(int(tree.node_parent[b, path[-1]]))
    return path[::-1]


def _step_record(env, tree, b: int, node: int, state: EnvState, action: int) -> StepRecord:
    candidates = env.candidates(state)
    children = tree.children_index[b, node, : len(candidates)]
    visits = [int(tree.node_visits[b, c]) if c >= 0 else 0 for c in children]
    q = [
        float(tree.children_reward[b, node, a] + tree.node_value_sum[b, c] / max(tree.node_visits[b, c], 1))
        if c >= 0
        else None
        for a, c in enumerate(children)
    ]
    return StepRecord(
        response_len=len(state.response_ids),
        candidates=[list(c.token_ids) for c in candidates],
        labels=[c.label for c in candidates],
        priors=[round(c.prior, 6) for c in candidates],
        visits=visits,
        q_values=q,
        action=action,
        reward=float(tree.children_reward[b, node, action]),
    )
