"""ReasoningEnv: writing a solution to a math problem one reasoning step at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from azgym import rewards as rw
from azgym import views
from azgym.config import ENV_DEFAULTS, ConfigError, EnvConfig, env_override
from azgym.lm.base import LanguageModel
from azgym.lm.hf import shared_backend
from azgym.lm.registry import DEFAULT_MODEL
from azgym.prompts import system_prompt
from azgym.spaces import PAD, as_action, observation_space, padded, played_slot
from azgym.state import EnvState, Judgement, Transition
from azgym.tasks import get_task
from azgym.tasks.base import Problem, has_partial_credit
from azgym.teachers import Candidate, ProposalRequest, TeacherEnsemble, TeacherProposer, load_teachers
from azgym.terminal import RuleTerminalChecker, make_terminal_checker

__all__ = ["PAD", "EnvState", "ReasoningEnv"]


class ReasoningEnv(gym.Env):
    """Solve a math word problem step by step, choosing among teacher-proposed next steps.

    ## Description
    A state is a problem plus the partial response written so far. At every step a teacher model
    proposes up to K candidate next steps (one reasoning line each): ``num_right`` written under a
    "continue correctly" prompt and ``num_wrong`` under a "continue with a plausible mistake"
    prompt, each with a prior. The action picks one; its text is appended to the response.

    ## Action Space
    ``Discrete(K)``, K = ``num_right + num_wrong``. Slot i holds a candidate when
    ``info["action_mask"][i] == 1`` (duplicates are merged, so a state can have fewer than K). Every
    action in the space is a move, as in Gymnasium's masked envs (the mask is a hint): an empty slot
    ``i`` plays the candidate of slot ``i mod n`` (n the number of filled slots), the slot its merged
    duplicate would have wrapped onto; ``info["action_played"]`` after ``step`` says which slot that was.

    ## Observation Space
    ``Dict`` of token ids (the teacher's tokenizer) padded with ``PAD = -1``:
    - ``question_ids``: ``Box(-1, vocab-1, (max_question_tokens,), int64)``, the problem.
    - ``response_ids``: ``Box(-1, vocab-1, (max_tokens,), int64)``, the response so far.
    - ``depth``: ``Discrete(max_steps + 1)``, steps taken.
    The text is in ``info`` too: ``question``, ``response``, ``candidates`` (texts of the valid
    slots), ``labels`` ("right"/"wrong"), ``priors`` (K floats), ``action_mask`` (K int8).

    ## Rewards
    See :mod:`azgym.rewards`. HRE is the outcome on the value scale: +1 for a correct final answer,
    -1 for any other end (wrong, unmarked, truncated), 0 before the end. The seed preset (default):
    0.4·HRE + 0.6·γ^t·PRE − 0.01 ± direction bonus per step; the outcome preset: HRE alone; the
    partial preset (tasks with partial credit, Countdown): HRE = −1 + 2·credit at the end.
    ``info["reward_terms"]`` holds every term of the last step.

    ## Starting State
    A problem drawn with ``self.np_random`` (or chosen by ``options={"problem_index": i}`` or
    ``options={"problem_id": "..."}``), an empty response.

    ## Episode End
    Terminated when a step states a final answer (``#### <number>`` or ``\\boxed{}``; Countdown:
    ``</answer>``) or the teacher ends its response (end of sequence), or, with ``terminal="model"``,
    when the scoring model judges the response complete; ``info["grade"]`` then holds the grade.
    Truncated after ``max_steps`` steps or ``max_tokens`` response tokens (graded too: HRE is -1
    unless the answer, read as ``answer`` says, is right).

    ## Arguments
    - ``data``: for GSM8K a ``.jsonl``/``.parquet`` path, a folder holding ``<split>.jsonl`` or a Hub
      id (default ``openai/gsm8k``); for arithmetic a level spec (default ``"add2"``, see
      :mod:`azgym.tasks.arithmetic`); for countdown a level spec (default ``"3"``, see
      :mod:`azgym.tasks.countdown`); or a list of :class:`~azgym.tasks.Problem`.
    - ``split``: ``"train"`` or ``"test"``.
    - ``model``: a :class:`~azgym.lm.LanguageModel`, or a model name (default
      ``smollm2-135m-instruct``), path or Hub id that the registry loads (one shared copy per
      process, :func:`azgym.lm.hf.shared_backend`); the teacher and the scoring model.
    - ``teachers``: ``None`` (``model`` proposes alone), a tier (``"local"``: SmolLM2-135M-Instruct +
      Gemma-3-270M; ``"free"``, ``"production"``: Hub models for a GPU) or model names: a
      :class:`~azgym.teachers.TeacherEnsemble` whose teachers propose and ``model`` scores.
    - ``proposer``: a ready :class:`~azgym.teachers.TeacherEnsemble` (or ``TeacherProposer``);
      overrides ``model``, ``teachers`` and the candidate settings.
    - the settings of :class:`~azgym.config.EnvConfig` (each documented there, with its default):
      ``task``, ``num_right`` / ``num_wrong`` (candidates per state), ``right_prompt`` (``"solve"``: the
      scoring model's right candidates are its own steps under the solve prompt), ``chunk_tokens`` (step cap),
      ``max_steps`` (env var ``MAX_TREE_DEPTH``) and ``max_tokens`` (env var ``MAX_TOKENS``; an
      explicit argument wins over the variable, which wins over the default), ``max_question_tokens``,
      ``rewards`` (a preset name or a :class:`~azgym.rewards.RewardConfig`), ``answer`` (replaces the
      preset's answer rule when given), ``terminal`` (``"rule"``, ``"model"``: see
      :mod:`azgym.terminal`, or a checker object) and ``prompt`` (the solve prompt's system message,
      see :mod:`azgym.prompts`; priors, PRE and the student's training prompt use it).
      :meth:`from_config` builds the env from an ``EnvConfig``.
    - ``render_mode``: ``None`` or ``"ansi"``.
    - ``on_episode_end``: called with the final :class:`~azgym.state.EnvState` when ``step`` ends an
      episode, e.g. ``env.proposer.credit`` to move an ensemble's teacher weights toward the teachers whose
      steps earned more. The env itself learns nothing: what learns (teacher weights, proposal caches,
      sampling temperatures) lives in the proposer, which the agents drive.

    ## Version History
    - v0: the env learns nothing: ``step`` credits teachers only through ``on_episode_end``, and the
      proposer's learning (weights, caches, temperatures) is driven through ``env.proposer``; one
      grading function, :meth:`judge`. Results of ``step`` are unchanged.
    - v0: an empty slot plays the candidate of slot ``i mod n`` (it raised ``InvalidAction``: a random
      agent, ``action_space.sample()``, crashed where duplicates had been merged).
    - v0: initial release (``AZLLM-GSM8K-v0``, ``AZLLM-Arithmetic-v0``, ``AZLLM-Countdown-v0``); before the
      first tagged release HRE moved to the value scale (a wrong or truncated end pays -1, was 0).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        data: str | Path | Sequence[Problem] | None = None,
        split: str = "train",
        model: str | LanguageModel = DEFAULT_MODEL,
        *,
        task: str = ENV_DEFAULTS.task,
        proposer: TeacherEnsemble | None = None,
        teachers: str | Sequence[str] | None = None,
        terminal: str | RuleTerminalChecker = ENV_DEFAULTS.terminal,
        num_right: int = ENV_DEFAULTS.num_right,
        num_wrong: int = ENV_DEFAULTS.num_wrong,
        right_prompt: str = ENV_DEFAULTS.right_prompt,
        chunk_tokens: int = ENV_DEFAULTS.chunk_tokens,
        max_steps: int | None = None,
        max_tokens: int | None = None,
        max_question_tokens: int = ENV_DEFAULTS.max_question_tokens,
        rewards: str | rw.RewardConfig = ENV_DEFAULTS.rewards,
        answer: str | None = None,
        device: str = "cpu",
        render_mode: str | None = None,
        prompt: str = ENV_DEFAULTS.prompt,
        on_episode_end: Callable[[EnvState], None] | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.task = get_task(task)
        settings = EnvConfig(  # validates every scalar setting at once
            task=task,
            num_right=num_right,
            num_wrong=num_wrong,
            right_prompt=right_prompt,
            chunk_tokens=chunk_tokens,
            max_steps=env_override("MAX_TREE_DEPTH", ENV_DEFAULTS.max_steps) if max_steps is None else max_steps,
            max_tokens=env_override("MAX_TOKENS", ENV_DEFAULTS.max_tokens) if max_tokens is None else max_tokens,
            max_question_tokens=max_question_tokens,
            prompt=prompt,
        )
        data = self.task.DEFAULT_DATA if data is None or data == "" else data
        self.render_mode = render_mode
        self.max_steps = settings.max_steps
        self.max_tokens = settings.max_tokens
        self.max_question_tokens = max_question_tokens
        self.reward_config = rw.resolve_rewards(rewards, answer)
        if self.reward_config.credit == "partial" and not has_partial_credit(self.task):
            why = (
                f"partial credit needs a task that defines it (countdown); task {task!r} has none: use outcome or seed"
            )
            raise ConfigError([("rewards", why)], "ReasoningEnv")
        self.problems = list(data) if _is_problem_list(data) else self.task.load_problems(data, split)
        if not self.problems:
            raise ValueError(f"no problems in {data!r} (split {split!r}); the environment needs at least one")
        self._problem_index = {p.id: i for i, p in enumerate(self.problems)}
        if proposer is None:
            lm = shared_backend(model, device) if isinstance(model, str) else model
            options = dict(
                system_prompt=system_prompt(self.task.NAME, prompt),
                num_right=num_right,
                num_wrong=num_wrong,
                right_prompt=right_prompt,
                chunk_tokens=chunk_tokens,
            )
            if teachers:
                teacher_list = load_teachers(teachers, lm, loader=lambda name: shared_backend(name, device))
                proposer = TeacherEnsemble(lm, teacher_list, **options)
            else:
                proposer = TeacherProposer(lm, **options)
        self.proposer = proposer
        self.on_episode_end = on_episode_end
        self.lm = proposer.lm
        self.terminal = make_terminal_checker(terminal, self.lm, self.task)
        num_candidates = proposer.num_candidates
        self.action_space = spaces.Discrete(num_candidates)
        sizes = (max_question_tokens, self.max_tokens, self.max_steps)
        self.observation_space = observation_space(self.lm.vocab_size, *sizes)
        self._state: EnvState | None = None
        self._last_terms: dict[str, float] = {}
        self._question_ids: dict[int, np.ndarray] = {}  # problem index -> padded question observation

    @classmethod
    def from_config(
        cls,
        config: EnvConfig,
        *,
        model: str | LanguageModel = DEFAULT_MODEL,
        split: str = "train",
        data: Sequence[Problem] | None = None,
        device: str = "cpu",
        **kwargs,
    ) -> ReasoningEnv:
        """The env an :class:`~azgym.config.EnvConfig` describes (``data`` replaces ``config.data``)."""
        names = ("task", "terminal", "num_right", "num_wrong", "right_prompt", "chunk_tokens", "max_steps")
        names += ("max_tokens", "max_question_tokens", "rewards", "answer", "prompt")
        settings = {name: getattr(config, name) for name in names} | {"teachers": config.teachers or None}
        return cls(config.data if data is None else data, split, model, device=device, **settings, **kwargs)

    # -- Gymnasium API ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"problem_index", "problem_id"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; use 'problem_index' or 'problem_id'")
        index = self._choose_problem(options)
        self._state = self.initial_state(index, int(self.np_random.integers(0, 2**31 - 1)))
        self._last_terms = {}
        return self._observation(), self._info()

    def step(self, action):
        state = self._require_state()
        outcome = self.transition(state, action)
        self._state = outcome.state
        self._last_terms = outcome.terms
        info = self._info()
        info["action_played"] = played_slot(int(action), len(self.candidates(state)))
        if outcome.grade is not None:
            info["grade"] = asdict(outcome.grade)
            if self.on_episode_end is not None:
                self.on_episode_end(outcome.state)
        terminated, truncated = outcome.state.terminated, outcome.state.truncated
        return self._observation(), outcome.reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        state = self._require_state()
        ended = state.terminated or state.truncated
        grade = self.judge(state, state.response_ids).grade if ended else None
        response = self.lm.decode(state.response_ids)
        return views.ansi(self.problem(state), response, state, self.max_steps, grade, self.candidates())

    # -- planning ----------------------------------------------------------------------------------

    def initial_state(self, problem_index: int, seed: int) -> EnvState:
        """The start of an episode on problem ``problem_index`` with episode seed ``seed`` (no env change)."""
        if not 0 <= problem_index < len(self.problems):
            raise ValueError(f"problem_index {problem_index} out of range: there are {len(self.problems)} problems")
        return EnvState(problem_index=problem_index, response_ids=(), depth=0, seed=int(seed))

    def get_state(self) -> EnvState:
        """The current state: an immutable snapshot, restorable with :meth:`set_state`."""
        return self._require_state()

    def set_state(self, state: EnvState) -> None:
        """Jump to a state from :meth:`get_state` (of this env or another on the same problems)."""
        if not isinstance(state, EnvState):
            raise TypeError(f"set_state expects an EnvState from get_state(), got {type(state).__name__}")
        if not 0 <= state.problem_index < len(self.problems):
            raise ValueError(
                f"state refers to problem {state.problem_index}, but this env has {len(self.problems)} problems"
            )
        self._state = state
        self._last_terms = {}

    def transition(self, state: EnvState, action) -> Transition:
        """The outcome of ``action`` in ``state``, without changing the env or proposing for the child.

        :meth:`step` is ``transition`` on the current state; a search calls it on any state and
        expands the children it keeps in one batched :meth:`expand` call.
        """
        if state.terminated or state.truncated:
            raise ResetNeeded("the episode has ended (terminated or truncated); call reset() to start a new one")
        candidates = self.candidates(state)
        index = as_action(action, self.action_space.n)
        if not candidates:
            raise RuntimeError("a live state has no candidates: every teacher's proposals were empty")
        chosen = candidates[played_slot(index, len(candidates))]
        response_ids = state.response_ids + chosen.token_ids
        problem = self.problems[state.problem_index]
        terminated = self.terminal.is_terminal(problem.question, response_ids, chosen)
        truncated = not terminated and (state.depth + 1 >= self.max_steps or len(response_ids) >= self.max_tokens)
        judgement = self.judge(state, response_ids) if terminated or truncated else None
        terms = rw.step_reward(
            self.reward_config,
            depth=state.depth,
            pre=chosen.logprob,
            label=chosen.label,
            ended=judgement is not None,
            correct=bool(judgement and judgement.solved),
            credit=judgement.credit if judgement else None,
        )
        child = replace(
            state,
            response_ids=response_ids,
            depth=state.depth + 1,
            pre_return=state.pre_return + terms["discounted_pre"],
            episode_return=state.episode_return + terms["total"],
            num_right_steps=state.num_right_steps + (chosen.label == "right"),
            num_wrong_steps=state.num_wrong_steps + (chosen.label == "wrong"),
            teachers=state.teachers + (chosen.teacher,),
            terminated=terminated,
            truncated=truncated,
        )
        return Transition(child, float(terms["total"]), terms, judgement)

    def candidates(self, state: EnvState | None = None) -> list[Candidate]:
        """The candidates of a state (default: the current one); empty once the episode ended."""
        return self.expand([state or self._require_state()])[0]

    def expand(self, states: Sequence[EnvState]) -> list[list[Candidate]]:
        """Candidates of many states in one batched teacher call (what a search agent uses)."""
        live = [i for i, s in enumerate(states) if not (s.terminated or s.truncated)]
        proposals = self.proposer.propose([self._request(states[i]) for i in live]) if live else []
        out: list[list[Candidate]] = [[] for _ in states]
        for i, candidates in zip(live, proposals, strict=True):
            out[i] = candidates
        return out

    def problem(self, state: EnvState | None = None) -> Problem:
        return self.problems[(state or self._require_state()).problem_index]

    # -- what agents and learners ask of the env (they never reach into the proposer) ---------------

    def solve_prompt(self, state: EnvState | Problem | None = None) -> list[int]:
        """Token ids of the solve prompt of a state's (or a problem's) question: the prompt the
        student writes its response after, in training, in search and at evaluation."""
        problem = state if isinstance(state, Problem) else self.problem(state)
        return self.proposer.solve_prompt(problem.question)

    def judge(self, state: EnvState | int, response_ids: Sequence[int]) -> Judgement:
        """Grade a complete response to a state's (or a problem index's) problem: the one grading function
        (the env's transitions, tree self-play and the adaptive rescue all judge through it)."""
        problem = self.problems[state.problem_index if isinstance(state, EnvState) else int(state)]
        response = self.lm.decode(response_ids)
        grade = self.task.grade(response, problem.gold)
        solved = self.solved(grade)
        if self.reward_config.credit != "partial":
            return Judgement(grade, solved, rw.outcome(solved))
        credit = 1.0 if solved else float(self.task.partial_credit(response, problem.gold))  # exact: WIN
        return Judgement(grade, solved, rw.partial_outcome(credit), credit)

    def solved(self, grade) -> bool:
        """Whether a grade is a solution under the env's answer rule (exact, whatever the reward preset pays)."""
        return bool(grade and (grade.correct if self.reward_config.answer == "strict" else grade.flexible_correct))

    def step_budget(self, state: EnvState) -> int:
        """Most tokens the next step of ``state`` may have (the step cap, within the response budget)."""
        return max(1, min(self.proposer.chunk_tokens, self.max_tokens - len(state.response_ids)))

    @property
    def step_stop(self) -> tuple[str, ...]:
        """Strings that end a step (a newline: one reasoning line per step)."""
        return self.proposer.stop

    # -- helpers -----------------------------------------------------------------------------------

    def _request(self, state: EnvState) -> ProposalRequest:
        problem = self.problems[state.problem_index]
        return ProposalRequest(
            problem_id=problem.id,
            question=problem.question,
            response_ids=state.response_ids,
            max_tokens=self.max_tokens - len(state.response_ids),
            seed=state.seed,
        )

    def _require_state(self) -> EnvState:
        if self._state is None:
            raise ResetNeeded("call reset() before step(), render() or get_state()")
        return self._state

    def _choose_problem(self, options: dict[str, Any]) -> int:
        if "problem_id" in options:
            if options["problem_id"] not in self._problem_index:
                raise ValueError(f"unknown problem_id {options['problem_id']!r}; ids look like {self.problems[0].id!r}")
            return self._problem_index[options["problem_id"]]
        if "problem_index" in options:
            index = int(options["problem_index"])
            if not 0 <= index < len(self.problems):
                raise ValueError(f"problem_index {index} out of range: there are {len(self.problems)} problems")
            return index
        return int(self.np_random.integers(len(self.problems)))

    def _observation(self) -> dict[str, np.ndarray | int]:
        state = self._require_state()
        return {
            "question_ids": self._question_observation(state.problem_index),
            "response_ids": padded(state.response_ids, self.max_tokens),
            "depth": state.depth,
        }

    def _question_observation(self, index: int) -> np.ndarray:
        if index not in self._question_ids:
            problem = self.problems[index]
            question = self.lm.encode(problem.question)
            if len(question) > self.max_question_tokens:
                raise ValueError(
                    f"problem {problem.id} has {len(question)} tokens, more than "
                    f"max_question_tokens={self.max_question_tokens}; raise max_question_tokens"
                )
            self._question_ids[index] = padded(question, self.max_question_tokens)
        return self._question_ids[index].copy()

    def _info(self) -> dict[str, Any]:
        state = self._require_state()
        response = self.lm.decode(state.response_ids)
        candidates = self.candidates()
        return views.info(self.problem(state), response, state, candidates, self.action_space.n, self._last_terms)


def _is_problem_list(data) -> bool:
    return isinstance(data, (list, tuple)) and all(isinstance(p, Problem) for p in data)
