"""Teachers: propose the K candidate next steps of a partial solution, each with a prior.

A teacher writes ``num_right`` continuations under a "continue this solution correctly" prompt
and ``num_wrong`` under a "continue it with a plausible mistake" prompt, one step each (up to a
newline, capped at ``chunk_tokens``). Candidates with the same text are merged (the first label
wins); slots left empty are topped up with more samples for a few rounds, then masked. The prior
of a candidate is a softmax over the candidates of its state of their mean token log-prob under the
plain solve prompt, the same quantity the environment's process reward (PRE) uses.

Results are cached per state, so revisiting a state (planning with ``set_state``, or MCTS) never
regenerates.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from azgym.lm.base import LanguageModel

logger = logging.getLogger(__name__)

RIGHT, WRONG = "right", "wrong"
RIGHT_PROMPT = (
    "You are a careful math tutor. Continue the solution below correctly with its next step, one "
    "line. When the answer is known, write the final line as '#### <number>'."
)
WRONG_PROMPT = (
    "You write flawed worked examples for students to correct. Continue the solution below with "
    "its next step, one line, but make one plausible mistake in it (a wrong operation or a wrong "
    "number) and carry on as if it were right."
)


@dataclass(frozen=True)
class Candidate:
    """One proposed next step."""

    text: str
    token_ids: tuple[int, ...]
    label: str  # "right" or "wrong": which prompt produced it
    logprob: float  # mean token log-prob under the plain solve prompt (the step's PRE)
    prior: float  # share of the state's prior mass
    finished: bool  # the teacher ended its response here (end of sequence)
    teacher: str  # name of the model that wrote it


@dataclass(frozen=True)
class ProposalRequest:
    """A state to expand: the problem, the response so far (token ids) and the budget left."""

    problem_id: str
    question: str
    response_ids: tuple[int, ...]
    max_tokens: int  # tokens the next step may use
    seed: int  # episode seed; mixed with the state so each state samples its own candidates


class TeacherProposer:
    """One teacher model proposing right and wrong next steps, batched over states.

    Args:
        lm: the teacher (and scoring) model.
        system_prompt: the task's plain solve prompt, used for priors and PRE.
        num_right: candidates from the "continue correctly" prompt.
        num_wrong: candidates from the "plausible mistake" prompt.
        chunk_tokens: cap on a step's length in tokens.
        stop: strings that end a step (a newline: one reasoning line per step).
        right_temperature / wrong_temperature: sampling temperatures of the two prompts.
        prior_temperature: softmax temperature over mean log-probs when forming priors.
        refill_rounds: extra sampling rounds to fill slots lost to duplicates.
        cache_size: states kept in the per-state cache.
    """

    def __init__(
        self,
        lm: LanguageModel,
        *,
        system_prompt: str,
        num_right: int = 2,
        num_wrong: int = 2,
        chunk_tokens: int = 48,
        stop: Sequence[str] = ("\n",),
        right_temperature: float = 0.7,
        wrong_temperature: float = 1.0,
        prior_temperature: float = 1.0,
        refill_rounds: int = 2,
        cache_size: int = 4096,
    ):
        if num_right < 0 or num_wrong < 0 or num_right + num_wrong < 1:
            raise ValueError(f"need at least one candidate per state, got num_right={num_right}, num_wrong={num_wrong}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
        if prior_temperature <= 0:
            raise ValueError(f"prior_temperature must be positive, got {prior_temperature}")
        self.lm = lm
        self.system_prompt = system_prompt
        self.num_right, self.num_wrong = num_right, num_wrong
        self.chunk_tokens = chunk_tokens
        self.stop = tuple(stop)
        self.temperatures = {RIGHT: right_temperature, WRONG: wrong_temperature}
        self.prior_temperature = prior_temperature
        self.refill_rounds = refill_rounds
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, list[Candidate]] = OrderedDict()
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}

    @property
    def num_candidates(self) -> int:
        return self.num_right + self.num_wrong

    def solve_prompt(self, question: str) -> list[int]:
        """Token ids of the plain solve prompt, ending where the response starts."""
        return self._prompt(self.system_prompt, question)

    def propose(self, requests: Sequence[ProposalRequest]) -> list[list[Candidate]]:
        """Candidates for each state, at most ``num_candidates`` each, priors summing to 1."""
        keys = [(r.problem_id, r.response_ids, r.max_tokens, r.seed) for r in requests]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            fresh = self._propose_uncached([requests[i] for i in todo])
            for i, candidates in zip(todo, fresh, strict=True):
                self._remember(keys[i], candidates)
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._cache[k])
        return out

    def clear_cache(self) -> None:
        """Forget every cached proposal (call it when the teacher's weights change)."""
        self._cache.clear()

    def _remember(self, key: tuple, candidates: list[Candidate]) -> None:
        self._cache[key] = candidates
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _propose_uncached(self, requests: Sequence[ProposalRequest]) -> list[list[Candidate]]:
        found: list[dict[str, tuple[str, tuple[int, ...], bool]]] = [{} for _ in requests]
        wanted = {RIGHT: self.num_right, WRONG: self.num_wrong}
        have = [{RIGHT: 0, WRONG: 0} for _ in requests]
        for round_index in range(1 + self.refill_rounds):
            prompts, budgets, temps, seeds, owners = [], [], [], [], []
            for i, r in enumerate(requests):
                for label, prompt_text in ((RIGHT, RIGHT_PROMPT), (WRONG, WRONG_PROMPT)):
                    for j in range(wanted[label] - have[i][label]):
                        prompts.append(self._prompt(prompt_text, r.question) + list(r.response_ids))
                        budgets.append(max(1, min(self.chunk_tokens, r.max_tokens)))
                        temps.append(self.temperatures[label])
                        seeds.append(_state_seed(r, label, round_index, j))
                        owners.append((i, label))
            if not prompts:
                break
            samples = self.lm.generate(prompts, max_tokens=budgets, stop=self.stop, temperature=temps, seed=seeds)
            for (i, label), (sample,) in zip(owners, samples, strict=True):
                key = sample.text.strip()
                if key in found[i]:
                    continue
                found[i][key] = (label, sample.token_ids, sample.finish_reason == "eos")
                have[i][label] += 1
        return self._with_priors(requests, found)

    def _with_priors(self, requests, found) -> list[list[Candidate]]:
        prompts, continuations, owners = [], [], []
        for i, r in enumerate(requests):
            solve = self.solve_prompt(r.question) + list(r.response_ids)
            for _, ids, _ in found[i].values():
                # an empty step (the teacher ended at once) is scored as its end-of-sequence token
                prompts.append(solve)
                continuations.append(ids or (self.lm.eos_token_id,))
                owners.append((i, ids))
        scored = self.lm.score(prompts, continuations) if prompts else []
        mean_logprob = {(i, ids): float(np.mean(s)) for (i, ids), s in zip(owners, scored, strict=True)}
        out = []
        for i, _ in enumerate(requests):
            entries = [(label, ids, finished, mean_logprob[(i, ids)]) for label, ids, finished in found[i].values()]
            logits = np.array([e[3] for e in entries], dtype=np.float64) / self.prior_temperature
            priors = np.exp(logits - logits.max()) if len(entries) else logits
            priors = priors / priors.sum() if len(entries) else priors
            out.append(
                [
                    Candidate(
                        text=self.lm.decode(ids),
                        token_ids=ids,
                        label=label,
                        logprob=lp,
                        prior=float(p),
                        finished=finished,
                        teacher=self.lm.name,
                    )
                    for (label, ids, finished, lp), p in zip(entries, priors, strict=True)
                ]
            )
        return out

    def _prompt(self, system: str, question: str) -> list[int]:
        key = (system, question)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) > 4 * self.cache_size:
                self._prompt_cache.clear()
            self._prompt_cache[key] = self.lm.chat_prompt(
                [{"role": "system", "content": system}, {"role": "user", "content": question}]
            )
        return self._prompt_cache[key]


def _state_seed(request: ProposalRequest, label: str, round_index: int, sample: int) -> int:
    """A sampling seed from the episode seed and the state, stable across processes."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{request.seed}|{request.problem_id}|{label}|{round_index}|{sample}|".encode())
    digest.update(np.asarray(request.response_ids, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1
