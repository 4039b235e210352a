"""Adaptive self-play: cheap groups first, the search only on the groups that teach nothing.

One iteration (``--selfplay adaptive``):

1. **Cheap groups.** ``group_size`` episodes per problem drawn from the teachers' priors, no search
   (:class:`~agents.policy.PriorAgent`, what ``--simulations 1`` plays). A group whose returns differ goes to
   the learner as it is.
2. **Dead groups.** A group where every episode failed has no GRPO advantage. If the problem has a verified
   response in the :class:`SolutionCache` (found earlier by sampling or by search), the newest one joins the group
   in place of its last episode (``source="cache"``). Otherwise it goes to the **rescue search**: the loop's MCTS
   (PUCT over the teachers' candidates and priors, the student's value head at the leaves, terminal edges graded
   against the gold answer: training only) grows one tree from the problem's root with ``rescue_simulations``
   simulations (the per-problem cap), every dead problem's tree in lockstep, ``rescue_leaves_per_round`` descents
   per tree and round (virtual loss: fewer, larger batched model calls). Problems beyond the iteration's
   ``rescue_budget`` (simulations) stay dead this iteration. Every node of a tree is looked at, not a played
   path: a terminal node whose response the grader accepts is a solved path (:func:`solved_paths`), and the
   shortest one joins its group in place of the last episode (``source="search"``).
3. **All-pass groups** (every episode solved; no advantage either) put their problem on the skip list: it is left
   out of the draw for ``skip_solved`` iterations (GRESO's predicted zero variance), saving its generation.

**The weight of a path that joins a group** (written down, as the issue asks). It is one sample of its group like
the others: its advantage is its return minus the group's mean return (divided by the group's std under
``--normalize-std``), clipped to ``adv_clip``, so with G episodes of which it alone solved its advantage is
``(WIN - LOSS) (G - 1) / G`` (1.5 for G = 4, ±1 returns) and each failed one's ``-(WIN - LOSS) / G``. Its PPO
ratio is taken against the student's own log-probs the first time a learner step trains it (as for every played
episode, :meth:`~agents.training.learner.Learner._old`), so on that step the policy term is exactly
``A · ∇ log π(path)``: a likelihood term on a verified path weighted by its group advantage (AlphaMath and
ReST-MCTS* train on verified search paths by likelihood), and later replays of it are clipped at
``1 + clip_eps_high``. No importance ratio to the search's behaviour policy is applied: that policy (visit counts
over teacher candidates) is not the student's, and its probability of the path is not defined per token.

What the phase did is returned as :class:`AdaptiveStats` (logged under ``adaptive/``) and appended to
``<run>/adaptive.jsonl`` by the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from agents.alphazero.selfplay import SelfPlayStats, play_episodes
from agents.mcts import MCTSAgent
from agents.policy import Agent, PriorAgent
from agents.training.replay import Episode, StepRecord, returns_equal
from azgym.env import EnvState, ReasoningEnv

RESCUE_SALT = 0x5EA  # the rescue roots' episode seeds come from a stream of their own (seed, iteration)


@dataclass
class AdaptiveStats:
    """What one adaptive self-play phase did (shares are over the phase's groups; NaN where undefined)."""

    groups: int = 0
    all_fail_before: float = float("nan")  # groups where every cheap episode failed
    all_pass_before: float = float("nan")  # groups where every cheap episode solved
    all_fail_after: float = float("nan")  # still all-fail after the cache and the search
    dead_after: float = float("nan")  # every return equal after the rescue (all-fail or all-pass)
    rescued_by_cache: int = 0
    rescued_by_search: int = 0
    searched_problems: int = 0  # all-fail problems the search was run on
    rescued_share: float = float("nan")  # of the all-fail groups, the share the cache or the search rescued
    search_rescue_rate: float = float("nan")  # of the searched problems, the share the search solved
    rescue_seconds: float = 0.0
    rescue_tokens: int = 0
    rescue_simulations: int = 0
    skipped_problems: int = 0  # on the skip list after this phase
    cached_problems: int = 0  # with at least one verified response in the cache

    log_prefix = "adaptive"

    def to_json(self) -> str:
        return json.dumps(
            {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}
        )


class SolutionCache:
    """Verified responses per problem id, at most ``per_problem`` each (the oldest forgotten first), kept as
    whole episodes so that a reused one trains like a played one. Saved with checkpoints (:meth:`state_dict`)."""

    def __init__(self, per_problem: int):
        self.per_problem = per_problem
        self.solutions: dict[str, list[Episode]] = {}

    def __len__(self) -> int:
        return len(self.solutions)

    def add(self, episode: Episode) -> None:
        """Keep a solved episode's response (once per distinct response)."""
        if self.per_problem <= 0 or not episode.solved:
            return
        kept = self.solutions.setdefault(episode.problem_id, [])
        if any(e.response_ids == episode.response_ids for e in kept):
            return
        kept.append(replace(episode, old_logprobs=None, ref_logprobs=None, ref_version=None))  # a copy: the replay's
        del kept[: -self.per_problem]  # episode gains the learner's log-probs, a reuse starts afresh

    def get(self, problem_id: str) -> Episode | None:
        """The newest verified response of a problem (None: none kept)."""
        kept = self.solutions.get(problem_id)
        return kept[-1] if kept else None

    def state_dict(self) -> dict:
        return {pid: [e.to_json() for e in kept] for pid, kept in self.solutions.items()}

    def load_state_dict(self, state: dict) -> None:
        self.solutions = {}
        for kept in state.values():  # through add: this cache's bound and the one-copy rule apply
            for line in kept:
                self.add(Episode.from_json(line))


def solved_paths(env: ReasoningEnv, result, b: int) -> list[list[EnvState]]:
    """Every root-to-node path of tree ``b`` of a search ``result`` that ends in a terminal node the grader accepts
    (training only: the grader sees the gold answer), shortest first; a path is its states, root first."""
    tree, states = result.tree, result.states
    ends = [n for n in range(int(tree.num_nodes[b])) if tree.node_terminal[b, n] and n != 0]
    paths = []
    for n in ends:
        state = states[b, n]
        if state is None or not is_solved(env, state):
            continue
        path = [n]
        while tree.node_parent[b, path[-1]] >= 0:
            path.append(int(tree.node_parent[b, path[-1]]))
        paths.append([states[b, i] for i in reversed(path)])
    return sorted(paths, key=len)


def is_solved(env: ReasoningEnv, state: EnvState) -> bool:
    """Whether a finished state's response is a solution under the env's answer rule."""
    return env.judge(state, state.response_ids).solved


def path_episode(env: ReasoningEnv, path: list[EnvState], *, iteration: int, weights_version: int) -> Episode:
    """The episode that plays ``path`` (its states, root first): one step per edge, with the candidates each
    state offered (the proposer's cached proposals: no model call) and the one taken."""
    steps = []
    for parent, child in zip(path[:-1], path[1:], strict=True):
        candidates = env.candidates(parent)
        taken = child.response_ids[len(parent.response_ids) :]
        action = next((i for i, c in enumerate(candidates) if tuple(c.token_ids) == taken), -1)
        if action < 0:  # the proposal was evicted and came back otherwise: keep the step taken alone
            candidates, action = [replace(candidates[0], token_ids=taken)] if candidates else [], 0
        steps.append(
            StepRecord(
                response_len=len(parent.response_ids),
                candidates=[list(c.token_ids) for c in candidates],
                labels=[c.label for c in candidates],
                priors=[round(c.prior, 6) for c in candidates],
                visits=[0] * len(candidates),
                q_values=[None] * len(candidates),
                action=action,
                reward=child.episode_return - parent.episode_return,
            )
        )
    end = path[-1]
    problem = env.problems[end.problem_index]
    judgement = env.judge(end, end.response_ids)
    return Episode(
        problem_id=problem.id,
        question=problem.question,
        prompt_ids=env.solve_prompt(problem),
        response_ids=list(end.response_ids),
        episode_return=end.episode_return,
        correct=bool(judgement.grade.correct),
        format_ok=bool(judgement.grade.format_ok),
        solved=judgement.solved,
        iteration=iteration,
        weights_version=weights_version,
        steps=steps,
        truncated=bool(end.truncated),
        source="search",
    )


class AdaptiveSelfPlay:
    """Cheap groups from ``cheap`` (default: the priors, no search), the ``rescue`` search on all-fail groups, a
    :class:`SolutionCache` and a skip list of problems whose groups all solved. See the module docstring."""

    def __init__(
        self,
        rescue: MCTSAgent,
        *,
        group_size: int,
        rescue_budget: int,
        solution_cache: int,
        skip_solved: int,
        cheap: Agent | None = None,
        seed: int = 0,
    ):
        self.cheap = cheap if cheap is not None else PriorAgent()
        self.rescue = rescue  # its config's num_simulations is the per-problem cap
        self.group_size = group_size
        self.rescue_budget = rescue_budget
        self.cache = SolutionCache(solution_cache)
        self.skip_solved = skip_solved
        self.skip_until: dict[int, int] = {}  # problem index -> first iteration it may be drawn again
        self.seed = seed

    def state_dict(self) -> dict:
        """The solution cache and the skip list (saved with checkpoints: a resumed run keeps both)."""
        return {"solutions": self.cache.state_dict(), "skip_until": {str(p): u for p, u in self.skip_until.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.cache.load_state_dict(state.get("solutions", {}))
        self.skip_until = {int(p): int(u) for p, u in state.get("skip_until", {}).items()}

    # -- the draw ------------------------------------------------------------------------------------------

    def draw_problems(self, num_problems: int, size: int, iteration: int, rng: np.random.Generator) -> list[int]:
        """``size`` problem indices out of ``num_problems`` without replacement, leaving out the skipped ones
        (all of them eligible again when too few are left). With nothing skipped this is the loop's own draw."""
        skipped = {p for p, until in self.skip_until.items() if until > iteration}
        if not skipped or num_problems - len(skipped) < size:
            return rng.choice(num_problems, size=size, replace=False).tolist()
        eligible = np.array([p for p in range(num_problems) if p not in skipped])
        return eligible[rng.choice(len(eligible), size=size, replace=False)].tolist()

    # -- one phase -----------------------------------------------------------------------------------------

    def play(
        self, env: ReasoningEnv, starts: list[EnvState], *, iteration: int, weights_version: int, progress: bool = False
    ) -> tuple[list[Episode], SelfPlayStats, AdaptiveStats]:
        """Cheap episodes from ``starts`` (``group_size`` per problem, a problem's together), then the rescue;
        returns the episodes in the order of their starts (rescued paths in place of failed episodes)."""
        episodes, stats = play_episodes(
            env, self.cheap, starts, iteration=iteration, weights_version=weights_version, progress=progress
        )
        self.skip_until = {p: until for p, until in self.skip_until.items() if until > iteration}  # expired: out
        size = self.group_size
        groups = [episodes[i : i + size] for i in range(0, len(episodes), size)]
        out = AdaptiveStats(groups=len(groups))
        dead: list[int] = []  # group indices whose every episode failed
        for g, group in enumerate(groups):
            for e in group:
                self.cache.add(e)
            if all(e.solved for e in group) and self.skip_solved:
                self.skip_until[starts[g * size].problem_index] = iteration + 1 + self.skip_solved
            if not any(e.solved for e in group):
                dead.append(g)
        out.all_fail_before = len(dead) / max(len(groups), 1)
        out.all_pass_before = sum(all(e.solved for e in group) for group in groups) / max(len(groups), 1)
        searched = []
        for g in dead:
            cached = self.cache.get(groups[g][0].problem_id)
            if cached is not None:
                reused = dict(iteration=iteration, weights_version=weights_version, source="cache")
                groups[g][-1] = replace(cached, **reused, old_logprobs=None, ref_logprobs=None, ref_version=None)
                out.rescued_by_cache += 1
            else:
                searched.append(g)
        if searched and self.rescue_budget > 0:
            self._search(
                env,
                groups,
                searched,
                [starts[g * size] for g in searched],
                stats,
                out,
                iteration=iteration,
                weights_version=weights_version,
            )
        out.all_fail_after = sum(not any(e.solved for e in group) for group in groups) / max(len(groups), 1)
        out.dead_after = sum(returns_equal(group) for group in groups) / max(len(groups), 1)
        rescued = out.rescued_by_cache + out.rescued_by_search
        out.rescued_share = rescued / len(dead) if dead else float("nan")
        if out.searched_problems:
            out.search_rescue_rate = out.rescued_by_search / out.searched_problems
        out.skipped_problems = sum(until > iteration + 1 for until in self.skip_until.values())
        out.cached_problems = len(self.cache)
        return [e for group in groups for e in group], stats, out

    def _search(self, env, groups, searched, roots, stats, out, *, iteration, weights_version) -> None:
        """One rescue tree per problem of ``searched`` (group indices; as many as the budget pays for), all in
        lockstep; the shortest solved path of each tree replaces its group's last episode."""
        start = time.perf_counter()
        per_problem = self.rescue.mcts.config.num_simulations
        take = min(len(searched), self.rescue_budget // per_problem)  # the config holds budget >= per_problem
        # fresh episode seeds: the roots' candidates are new samples, not the ones a failed cheap episode had
        rng = np.random.default_rng([RESCUE_SALT, self.seed, iteration])
        roots = [replace(root, seed=int(rng.integers(0, 2**31 - 1))) for root in roots[:take]]
        searched = searched[:take]
        out.searched_problems = len(searched)
        result = self.rescue.search(env, roots)
        for b, g in enumerate(searched):
            paths = solved_paths(env, result, b)
            if not paths:
                continue
            found = path_episode(env, paths[0], iteration=iteration, weights_version=weights_version)
            groups[g][-1] = found
            self.cache.add(found)
            out.rescued_by_search += 1
        out.rescue_simulations = result.num_simulations * len(roots)
        out.rescue_tokens = tree_tokens(env, result)
        out.rescue_seconds = time.perf_counter() - start
        stats.generated_tokens += out.rescue_tokens
        stats.seconds += out.rescue_seconds


def tree_tokens(env: ReasoningEnv, result) -> int:
    """Candidate tokens the search generated: those of every live node it expanded (read back from the
    proposer's per-state cache), as self-play counts every candidate of every move."""
    tree = result.tree
    live = [
        result.states[b, n]
        for b in range(tree.batch_size)
        for n in range(int(tree.num_nodes[b]))
        if not tree.node_terminal[b, n]
    ]
    return sum(len(c.token_ids) for candidates in env.expand(live) for c in candidates)
