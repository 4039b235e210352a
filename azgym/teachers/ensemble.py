"""Teachers: propose the K candidate next steps of a partial solution, each with a prior.

Teachers write ``num_right`` continuations under a "continue this solution correctly" prompt and
``num_wrong`` under a "continue it with a plausible mistake" prompt, one step each (up to a
newline, capped at ``chunk_tokens``). Candidates with the same text are merged (the first label
wins); slots left empty are topped up with more samples for a few rounds, then masked.

The prior of a candidate: its teacher's weight times the exponential of its mean token log-prob
under the plain solve prompt of the scoring model (the quantity the environment's process reward,
PRE, uses), normalised over the candidates of its state.

With ``right_prompt="solve"`` the scoring model writes its "right" candidates under that plain solve
prompt instead of the "continue correctly" one: they are its own next steps (on-policy for a student
that is the scorer), and they carry their log-probs from sampling, so only the other candidates
(the "wrong" ones, other teachers' ones) take a scoring pass.

An ensemble (:class:`TeacherEnsemble`) shares each state's slots among its teachers in proportion
to their weights, which follow an exponential moving average of the episode returns their chosen
candidates earned (:meth:`TeacherEnsemble.observe`). Teachers may use other tokenizers than the
scoring model (the response is passed as text) and base models are prompted few-shot. A teacher
that raises or answers malformed output is dropped with a warning naming it; the others go on.

Prompts come from :mod:`azgym.prompts`; models by name from :mod:`azgym.teachers.loading`.
Results are cached per state, so revisiting a state (planning with ``set_state``, or MCTS) never
regenerates.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from azgym.lm.base import LanguageModel
from azgym.prompts import (
    RIGHT,
    RIGHT_PROMPTS,
    WRONG,
    Preamble,
    few_shot_prompt,
    solve_prompt_ids,
    teacher_messages,
)
from azgym.teachers.records import Candidate, ProposalRequest, Teacher

logger = logging.getLogger(__name__)


class TeacherEnsemble:
    """Teachers proposing right and wrong next steps, batched over states, scored by one model.

    Args:
        scorer: the scoring model. Its tokenizer is the environment's (responses are its token
            ids) and its log-probs under the solve prompt give priors and PRE.
        teachers: the proposing models (the scorer may be one of them).
        system_prompt: the preamble of the task's plain solve prompt (a system message, the messages
            before the question, or None: the question alone), used for priors, PRE and the student's training prompt.
        num_right: candidates from the "continue correctly" prompt.
        num_wrong: candidates from the "plausible mistake" prompt.
        chunk_tokens: cap on a step's length in tokens.
        stop: strings that end a step (a newline: one reasoning line per step).
        right_temperature / wrong_temperature: sampling temperatures of the two prompts.
        prior_temperature: softmax temperature over mean log-probs when forming priors.
        refill_rounds: extra sampling rounds to fill slots lost to duplicates.
        right_prompt: ``"teacher"`` (the "continue correctly" prompt) or ``"solve"`` (the scorer's right
            candidates are its own samples under the plain solve prompt, priors from their sampled
            log-probs; other teachers keep the teacher prompt).
        cache_size: states kept in the per-state cache.
        weight_step: step size of each teacher's exponential moving average of returns (0 keeps weights fixed).
        weight_temperature: teacher weights are a softmax of those averages at this temperature.
    """

    def __init__(
        self,
        scorer: LanguageModel,
        teachers: Sequence[Teacher],
        *,
        system_prompt: Preamble,
        num_right: int = 2,
        num_wrong: int = 2,
        chunk_tokens: int = 48,
        stop: Sequence[str] = ("\n",),
        right_temperature: float = 0.7,
        wrong_temperature: float = 1.0,
        prior_temperature: float = 1.0,
        refill_rounds: int = 2,
        right_prompt: str = "teacher",
        cache_size: int = 4096,
        weight_step: float = 0.1,
        weight_temperature: float = 0.25,
    ):
        if num_right < 0 or num_wrong < 0 or num_right + num_wrong < 1:
            raise ValueError(f"need at least one candidate per state, got num_right={num_right}, num_wrong={num_wrong}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
        if prior_temperature <= 0 or weight_temperature <= 0:
            raise ValueError("prior_temperature and weight_temperature must be positive")
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        if right_prompt not in RIGHT_PROMPTS:
            raise ValueError(f"right_prompt must be one of {RIGHT_PROMPTS}, got {right_prompt!r}")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be distinct, got {names}")
        self.lm = scorer
        self.teachers = list(teachers)
        self.system_prompt = system_prompt
        self.num_right, self.num_wrong = num_right, num_wrong
        self.chunk_tokens = chunk_tokens
        self.stop = tuple(stop)
        self.temperatures = {RIGHT: right_temperature, WRONG: wrong_temperature}
        self._constructed_temperatures = dict(self.temperatures)
        self.prior_temperature = prior_temperature
        self.refill_rounds = refill_rounds
        self.right_prompt = right_prompt
        self.cache_size = cache_size
        self.weight_step = weight_step
        self.weight_temperature = weight_temperature
        self.values = {name: 0.0 for name in names}  # moving average of returns per teacher
        self.dropped: dict[str, str] = {}  # teacher name -> why it was dropped
        self.generated_tokens: Counter[str] = Counter()  # problem id -> tokens its proposals generated (all samples)
        self._cache: OrderedDict[tuple, list[Candidate]] = OrderedDict()
        self._prompt_cache: dict[tuple, list[int]] = {}

    @property
    def num_candidates(self) -> int:
        return self.num_right + self.num_wrong

    @property
    def live_teachers(self) -> list[Teacher]:
        return [t for t in self.teachers if t.name not in self.dropped]

    @property
    def weights(self) -> dict[str, float]:
        """Each live teacher's share: a softmax of its moving-average return."""
        live = [t.name for t in self.live_teachers]
        logits = np.array([self.values[n] for n in live]) / self.weight_temperature
        w = np.exp(logits - logits.max()) if live else logits
        return {n: float(x) for n, x in zip(live, w / w.sum(), strict=True)}

    def solve_prompt(self, question: str) -> list[int]:
        """Token ids (the scorer's) of the plain solve prompt, ending where the response starts."""
        return self._chat(self.lm, None, question)

    def propose(self, requests: Sequence[ProposalRequest]) -> list[list[Candidate]]:
        """Candidates for each state, at most ``num_candidates`` each, priors summing to 1."""
        keys = [(r.problem_id, r.response_ids, r.max_tokens, r.seed) for r in requests]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            fresh = self._propose_uncached([requests[i] for i in todo])
            for i, candidates in zip(todo, fresh, strict=True):
                self._remember(keys[i], candidates)
        weights = self.weights if len(self.teachers) > 1 else None
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._weighted(self._cache[k], weights))
        return out

    def observe(self, teachers: Sequence[str], episode_return: float) -> None:
        """Credit an episode's return to the teachers whose candidates it chose (each once)."""
        if not math.isfinite(episode_return):
            raise ValueError(
                f"episode return {episode_return!r} is not a finite number; check the reward configuration "
                "(a NaN reward term) before feeding it to the teacher weights"
            )
        for name in dict.fromkeys(teachers):
            if name in self.values:
                self.values[name] += self.weight_step * (episode_return - self.values[name])

    def credit(self, state) -> None:
        """Credit a finished episode (an :class:`~azgym.state.EnvState`) to the teachers whose candidates it chose."""
        self.observe(state.teachers, state.episode_return)

    def state_dict(self) -> dict:
        return {"values": dict(self.values), "dropped": dict(self.dropped)}

    def load_state_dict(self, state: dict) -> None:
        self.values.update({k: float(v) for k, v in state.get("values", {}).items() if k in self.values})
        self.dropped.update(state.get("dropped", {}))

    def clear_cache(self) -> None:
        """Forget every cached proposal (call it when a teacher's weights change)."""
        self._cache.clear()

    def set_temperature(self, temperature: float | None) -> None:
        """Sample every candidate, of both prompts, at ``temperature`` (None: back to the constructed
        right / wrong temperatures). Cached proposals are dropped when the temperatures change."""
        if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"a sampling temperature must be a finite number > 0, got {temperature!r}")
        wanted = dict(self._constructed_temperatures)
        if temperature is not None:
            wanted = dict.fromkeys(wanted, temperature)
        if wanted != self.temperatures:
            self.temperatures = wanted
            self.clear_cache()

    def _remember(self, key: tuple, candidates: list[Candidate]) -> None:
        self._cache[key] = candidates
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _weighted(self, candidates: list[Candidate], weights: dict[str, float] | None) -> list[Candidate]:
        if weights is None or not candidates:
            return candidates
        raw = np.array([c.prior * weights.get(c.teacher, 0.0) for c in candidates])
        if raw.sum() <= 0:  # every proposing teacher was dropped since: fall back to the unweighted priors
            return candidates
        raw /= raw.sum()
        return [replace(c, prior=float(p)) for c, p in zip(candidates, raw, strict=True)]

    def _propose_uncached(self, requests: Sequence[ProposalRequest]) -> list[list[Candidate]]:
        # per request: text -> (label, scorer ids, finished, teacher, mean log-prob under the solve prompt
        # when sampling already gave it, else None)
        found: list[dict[str, tuple[str, tuple[int, ...], bool, str, float | None]]] = [{} for _ in requests]
        weights = self.weights
        wanted = [self._allocate(r, weights) for r in requests]  # per request: {(teacher, label): slots}
        rounds, round_index = 1 + self.refill_rounds, 0
        while round_index < rounds:
            pending = False
            for teacher in self.live_teachers:
                prompts, budgets, temps, seeds, owners = [], [], [], [], []
                for i, r in enumerate(requests):
                    for label in (RIGHT, WRONG):
                        for j in range(wanted[i].get((teacher.name, label), 0)):
                            prompts.append(self._teacher_prompt(teacher, label, r))
                            budgets.append(max(1, min(self.chunk_tokens, r.max_tokens)))
                            temps.append(self.temperatures[label])
                            seeds.append(_state_seed(r, label, round_index, j, teacher=self._seed_tag(teacher)))
                            owners.append((i, label))
                if not prompts:
                    continue
                samples = self._generate(teacher, prompts, budgets, temps, seeds)
                if samples is None:  # dropped: its slots go to the teachers still live, in one more round
                    self._reassign(wanted, teacher.name)
                    pending, rounds = True, rounds + 1
                    continue
                for (i, label), sample in zip(owners, samples, strict=True):
                    self.generated_tokens[requests[i].problem_id] += len(sample.token_ids)
                    wanted[i][(teacher.name, label)] -= 1
                    ids = self._scorer_ids(teacher, sample, requests[i])
                    key = self.lm.decode(ids).strip() if teacher.lm is not self.lm else sample.text.strip()
                    if key in found[i]:
                        wanted[i][(teacher.name, label)] += 1  # a duplicate: the slot stays open
                        pending = True
                        continue
                    carried = float(np.mean(sample.logprobs)) if ids and self._on_solve_prompt(teacher, label) else None
                    found[i][key] = (label, ids, sample.finish_reason == "eos", teacher.name, carried)
            if not pending and all(v <= 0 for w in wanted for v in w.values()):
                break
            round_index += 1
        return self._with_priors(requests, found)

    def _generate(self, teacher: Teacher, prompts, budgets, temps, seeds):
        """The teacher's samples (one per prompt), or None after dropping a teacher that failed."""
        try:
            out = teacher.lm.generate(prompts, max_tokens=budgets, stop=self.stop, temperature=temps, seed=seeds)
            if len(out) != len(prompts) or any(len(o) != 1 for o in out):
                raise RuntimeError(f"returned {len(out)} results for {len(prompts)} prompts")
        except Exception as err:  # noqa: BLE001 - any failure of one teacher must not end the episode
            self._drop(teacher, f"{type(err).__name__}: {err}")
            return None
        return [o[0] for o in out]

    def _drop(self, teacher: Teacher, why: str) -> None:
        self.dropped[teacher.name] = why
        left = [t.name for t in self.live_teachers]
        logger.warning(
            "teacher %s failed (%s); dropped, %s",
            teacher.name,
            why,
            f"the others continue: {', '.join(left)}" if left else "no teacher is left",
        )
        if not left:
            raise RuntimeError(
                f"every teacher failed: {'; '.join(f'{n}: {w}' for n, w in self.dropped.items())}. "
                "Check the model names and that each loads and generates on its own."
            )

    def _reassign(self, wanted: list[dict], name: str) -> None:
        live = self.live_teachers
        for w in wanted:
            for label in (RIGHT, WRONG):
                slots = max(w.pop((name, label), 0), 0)
                for j in range(slots):
                    key = (live[j % len(live)].name, label)
                    w[key] = w.get(key, 0) + 1

    def _allocate(self, request: ProposalRequest, weights: dict[str, float]) -> dict[tuple[str, str], int]:
        """Each label's slots shared among the live teachers by weight (systematic sampling with a
        seeded offset, so a teacher gets floor or ceil of its share)."""
        live = self.live_teachers
        if len(live) == 1:
            return {(live[0].name, RIGHT): self.num_right, (live[0].name, WRONG): self.num_wrong}
        cumulative = np.cumsum([weights[t.name] for t in live])
        out: dict[tuple[str, str], int] = {}
        for label, slots in ((RIGHT, self.num_right), (WRONG, self.num_wrong)):
            offset = (_state_seed(request, label, -1, 0) % 10_000) / 10_000
            points = (offset + np.arange(slots)) / max(slots, 1)
            owners = np.searchsorted(cumulative, points, side="right").clip(max=len(live) - 1)
            for t in owners:
                key = (live[int(t)].name, label)
                out[key] = out.get(key, 0) + 1
        return out

    def _seed_tag(self, teacher: Teacher) -> str:
        return "" if teacher is self.teachers[0] else teacher.name

    def _on_solve_prompt(self, teacher: Teacher, label: str) -> bool:
        """Whether this teacher writes this label's candidates under the plain solve prompt (its own steps)."""
        return self.right_prompt == "solve" and label == RIGHT and teacher.lm is self.lm

    def _teacher_prompt(self, teacher: Teacher, label: str, request: ProposalRequest) -> list[int]:
        if self._on_solve_prompt(teacher, label):
            return self.solve_prompt(request.question) + list(request.response_ids)
        if teacher.lm is self.lm:
            return self._chat(self.lm, label, request.question) + list(request.response_ids)
        response = self.lm.decode(request.response_ids)
        if teacher.style == "few_shot":
            key = (teacher.name, label, request.question)
            if key not in self._prompt_cache:
                self._prompt_cache[key] = teacher.lm.encode(few_shot_prompt(label, request.question))
            return self._prompt_cache[key] + (teacher.lm.encode(" " + response) if response else [])
        head = self._chat(teacher.lm, label, request.question)
        return head + (teacher.lm.encode(response) if response else [])

    def _scorer_ids(self, teacher: Teacher, sample, request: ProposalRequest) -> tuple[int, ...]:
        """A sample in the scorer's tokens (re-encoded from text for another tokenizer), within budget."""
        if teacher.lm is self.lm:
            return tuple(sample.token_ids)
        text = sample.text if request.response_ids else sample.text.lstrip()
        return tuple(self.lm.encode(text))[: max(1, min(self.chunk_tokens, request.max_tokens))]

    def _with_priors(self, requests, found) -> list[list[Candidate]]:
        prompts, continuations, owners = [], [], []
        for i, r in enumerate(requests):
            solve = self.solve_prompt(r.question) + list(r.response_ids)
            for _, ids, _, _, carried in found[i].values():
                if carried is not None:  # sampled under this very prompt: its log-probs came with it
                    continue
                # an empty step (the teacher ended at once) is scored as its end-of-sequence token
                prompts.append(solve)
                continuations.append(ids or (self.lm.eos_token_id,))
                owners.append((i, ids))
        scored = self.lm.score(prompts, continuations) if prompts else []
        mean_logprob = {(i, ids): float(np.mean(s)) for (i, ids), s in zip(owners, scored, strict=True)}
        out = []
        for i, _ in enumerate(requests):
            entries = [(*e[:4], mean_logprob[(i, e[1])] if e[4] is None else e[4]) for e in found[i].values()]
            logits = np.array([e[4] for e in entries], dtype=np.float64) / self.prior_temperature
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
                        teacher=name,
                    )
                    for (label, ids, finished, name, lp), p in zip(entries, priors, strict=True)
                ]
            )
        return out

    def _chat(self, lm: LanguageModel, label: str | None, question: str) -> list[int]:
        """``lm``'s chat prompt ids: the solve prompt (``label=None``) or a teacher prompt, cached."""
        key = (id(lm), label, question)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) > 4 * self.cache_size:
                self._prompt_cache.clear()
            if label is None:
                ids = solve_prompt_ids(lm, self.system_prompt, question)
            else:
                ids = lm.chat_prompt(teacher_messages(label, question))
            self._prompt_cache[key] = ids
        return self._prompt_cache[key]


class TeacherProposer(TeacherEnsemble):
    """One model that proposes, scores and sets the priors (an ensemble of one)."""

    def __init__(self, lm: LanguageModel, *, system_prompt: Preamble, **kwargs):
        super().__init__(lm, [Teacher(lm)], system_prompt=system_prompt, **kwargs)


def _state_seed(request: ProposalRequest, label: str, round_index: int, sample: int, teacher: str = "") -> int:
    """A sampling seed from the episode seed and the state, stable across processes."""
    digest = hashlib.blake2b(digest_size=8)
    tag = f"{teacher}|" if teacher else ""
    digest.update(f"{tag}{request.seed}|{request.problem_id}|{label}|{round_index}|{sample}|".encode())
    digest.update(np.asarray(request.response_ids, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1
