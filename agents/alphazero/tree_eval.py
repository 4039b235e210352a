"""Evaluation by tree search that never sees the answer: B problems searched in lockstep, graded only at the end.

During self-play a search may value its terminal states with the grader (that is the training signal).
At evaluation it must not: a search that grades its leaves against the gold answer picks moves with the
answer key in hand, and its accuracy is not a model's accuracy. So here the search runs on a blind
:class:`~agents.mcts.EnvSearchModel`: a finished response is valued by the value head or by
:class:`AnswerAgreement` (how many of the finished responses the search reached give the same answer),
never by the grade, and the env's rewards and grades are not read. Teacher weights are not updated
either (no teacher is credited). The caller grades the final responses.

Cost is counted in generated tokens (every sample the teachers drew, duplicates included; the scoring
and value passes are prefill, not counted), so a search can be compared with greedy decoding and maj@k
at the same generated tokens. With a ``token_budget`` a problem whose search has spent it stops
searching, and the student finishes its response greedily from where the search left it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from agents.mcts import MCTS, EnvSearchModel
from agents.policy import ValueFn
from azgym.env import EnvState, ReasoningEnv
from azgym.rewards import LOSS, WIN

TERMINAL_VALUES = ("auto", "head", "agreement")  # how a blind search values a finished response


class AnswerAgreement:
    """A terminal value that reads no gold answer: agreement among the finished responses an episode's search reached.

    For a finished response with parsed answer x, among the n distinct finished responses reached so far in
    the same episode (same problem and episode seed, across moves), of which c give x::

        value = LOSS + (WIN - LOSS) * c / (n + 1)

    A lone answer is worth 0 (neutral, not certain), agreement raises it towards WIN; a response with no
    readable answer is worth LOSS (it cannot be graded correct). The value of a response is fixed when
    the search first reaches it. ``strict`` reads answers as the env's answer rule does.
    """

    def __init__(self, task, *, strict: bool = True):
        self.task = task
        self.strict = strict
        self._reached: dict[tuple[int, int], dict[tuple[int, ...], str | None]] = {}  # episode -> response -> answer

    def __call__(self, env: ReasoningEnv, states: Sequence[EnvState]) -> np.ndarray:
        keys = [(s.problem_index, s.seed) for s in states]
        for key, s in zip(keys, states, strict=True):  # the whole batch first: values do not depend on its order
            reached = self._reached.setdefault(key, {})
            if s.response_ids not in reached:
                reached[s.response_ids] = self.task.extract_answer(env.lm.decode(s.response_ids), strict=self.strict)
        values = np.empty(len(states), np.float64)
        for i, (key, s) in enumerate(zip(keys, states, strict=True)):
            reached = self._reached[key]
            answer = reached[s.response_ids]
            agree = sum(a == answer for a in reached.values()) if answer is not None else 0
            values[i] = LOSS if answer is None else LOSS + (WIN - LOSS) * agree / (len(reached) + 1)
        return values


def head_is_trained(head: torch.nn.Module | None) -> bool:
    """Whether a value head has learned anything (a fresh one is all zeros and says 0 everywhere)."""
    return head is not None and any(bool(p.detach().abs().sum() > 0) for p in head.parameters())


@dataclass
class BlindSearch:
    """Plays B problems in lockstep, one blind search per move, and returns the final responses.

    Args:
        search: the search (its config's ``root``, simulations, ...); moves are its ``choose``:
            the Gumbel selected action, or a draw from the visit policy (temperature 0: the most visited).
        value_fn: values of live leaves (the value head), ``(env, states) -> [M]`` in [-1, 1].
        terminal_value_fn: values of finished responses, never the grade (default: :class:`AnswerAgreement`
            under the env's answer rule).
        token_budget: generated tokens per problem the search may spend (0: no limit); past it the
            student finishes the response greedily.
    """

    search: MCTS
    value_fn: ValueFn
    terminal_value_fn: ValueFn | None = None
    token_budget: int = 0

    def __post_init__(self):
        if self.token_budget < 0:
            raise ValueError(f"token_budget must be >= 0 (0: no limit), got {self.token_budget}")

    def responses(
        self,
        env: ReasoningEnv,
        lm,
        problem_indices: Sequence[int],
        *,
        seed: int = 0,
        batch_size: int = 32,
        progress: bool = True,
    ) -> list[tuple[str, int]]:
        """(response text, generated tokens) for each of ``env.problems[i]``, ``batch_size`` problems in lockstep.

        ``lm`` finishes responses past the budget (the student's backend). The env's proposal cache is
        cleared first, so every generated token of this evaluation is counted.
        """
        env.proposer.clear_cache()
        terminal = self.terminal_value_fn or AnswerAgreement(env.task, strict=env.reward_config.answer == "strict")
        model = EnvSearchModel(env, self.value_fn, terminal_value_fn=terminal)
        out: list[tuple[str, int]] = []
        bar = tqdm(total=len(problem_indices), desc="eval tree", unit="problem", disable=not progress, leave=False)
        for start in range(0, len(problem_indices), batch_size):
            chunk = list(problem_indices[start : start + batch_size])
            out.extend(self._play(env, lm, model, chunk, np.random.default_rng([seed, start])))
            bar.update(len(chunk))
        bar.close()
        return out

    def _play(self, env: ReasoningEnv, lm, model: EnvSearchModel, chunk: list[int], rng: np.random.Generator):
        counter = env.proposer.generated_tokens
        ids = [env.problems[i].id for i in chunk]
        before = [counter[pid] for pid in ids]
        states = [env.initial_state(i, int(rng.integers(0, 2**31 - 1))) for i in chunk]
        finished: dict[int, tuple[str, int]] = {}  # row -> (text, tokens the greedy finish generated)
        live = list(range(len(chunk)))
        while live:
            spent = [r for r in live if self.token_budget and counter[ids[r]] - before[r] >= self.token_budget]
            finished.update(self._finish(env, lm, [states[r] for r in spent], spent))
            live = [r for r in live if r not in finished]
            if not live:
                break
            result = self.search.search(model, [states[r] for r in live], rng)
            for r, action in zip(live, result.choose(rng), strict=True):
                if action < 0:
                    raise RuntimeError(f"problem {ids[r]}: no valid action in a live state (no candidates proposed)")
                states[r] = env.transition(states[r], int(action)).state  # its reward and grade are not read
            live = [r for r in live if not (states[r].terminated or states[r].truncated)]
        out = []
        for r, state in enumerate(states):
            text, extra = finished.get(r, (lm.decode(state.response_ids), 0))
            out.append((text, counter[ids[r]] - before[r] + extra))
        return out

    def _finish(self, env: ReasoningEnv, lm, states: list[EnvState], rows: list[int]) -> dict[int, tuple[str, int]]:
        """The student's greedy completion of each partial response, in one batched call."""
        if not states:
            return {}
        prompts = [env.solve_prompt(s) + list(s.response_ids) for s in states]
        budgets = [max(1, env.max_tokens - len(s.response_ids)) for s in states]
        outs = lm.generate(prompts, max_tokens=budgets, temperature=0.0)
        return {
            r: (lm.decode(list(s.response_ids) + list(o[0].token_ids)), len(o[0].token_ids))
            for r, s, o in zip(rows, states, outs, strict=True)
        }
