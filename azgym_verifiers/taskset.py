"""azgym's tasks as a verifiers taskset: problems from azgym's registry, azgym's solve prompt and grader.

One task per problem of ``task_name`` (``gsm8k``, ``arithmetic`` or ``countdown``, from
:func:`azgym.tasks.load_problems`): the prompt is the question, the system prompt the task's solve
prompt (:func:`azgym.prompts.system_prompt`), the same chat the environment and the evaluator give the
student. The rubric is the seed system's (``vf-eval alphazero-llm-trainer``: correctness and perplexity),
weighted as azgym's seed reward preset weights HRE and PRE (:class:`azgym.rewards.RewardConfig`):

    reward = 0.4 * correct + 0.6 * perplexity

- ``correct``: 1.0 when azgym's grader (the task's ``grade``; numbers compared exactly, model text is
  never executed) finds the gold answer, else 0.0. ``answer="strict"`` (default) reads the ``#### ``
  marker (Countdown: ``<answer>``), ``"flexible"`` the last number.
- ``perplexity``: ``exp(mean token log-prob)`` of the reply under the scoring model after the same solve
  prompt, i.e. 1 / perplexity, in (0, 1] (0.0 for an empty reply). The scoring model is the student
  (:mod:`azgym_verifiers.scoring`: ``tier`` picks its size, ``scoring_model`` names one), loaded on the
  first reply it scores. ``use_student_model=False`` skips this reward and loads no model (the seed
  gave it weight 0 then): the reward is ``0.4 * correct``, and ``rewards.correct`` is the accuracy.
- metric ``format_ok``: 1.0 when the reply states an answer in the task's format.

Weights can be changed from the command line as for any verifiers task:
``--env.taskset.task.rewards.correct.weight 1.0``.
"""

from __future__ import annotations

from typing import Literal

import verifiers.v1 as vf
from pydantic import Field, field_validator

from azgym.prompts import system_prompt
from azgym.rewards import RewardConfig
from azgym.tasks import get_task, load_problems
from azgym.teachers.loading import TIERS
from azgym_verifiers.scoring import score_response, scoring_model_name

TASKSET_ID = "azgym-verifiers"  # the id `vf-eval` imports (as the module azgym_verifiers)
CORRECTNESS_WEIGHT = RewardConfig.hre_weight  # 0.4
PERPLEXITY_WEIGHT = RewardConfig.pre_weight  # 0.6


class AzgymData(vf.TaskData):
    """One problem: ``prompt`` is its question, ``system_prompt`` the task's solve prompt."""

    answer: str
    """The gold answer, as azgym's grader reads it."""
    task_name: str
    """The azgym task whose grader scores the reply."""


class AzgymTaskConfig(vf.TaskConfig):
    """Scoring settings (``--env.taskset.task.*``)."""

    answer: Literal["strict", "flexible"] = "strict"
    """What counts as the reply's answer: strict (the '#### ' marker) or flexible (the last number)."""
    use_student_model: bool = True
    """Score the perplexity reward with the scoring model; false skips it and loads no model."""
    tier: str = "local"
    """The scoring model's size class: local (SmolLM2-135M-Instruct, CPU), free (1.5B), production (7B)."""
    scoring_model: str = ""
    """A scoring model by short name, local directory or Hub id; replaces the tier's."""
    device: str = "cpu"
    """Where the scoring model runs: cpu, cuda, cuda:1, ..."""

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str) -> str:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; known tiers: {', '.join(TIERS)}")
        return tier


class AzgymConfig(vf.TasksetConfig):
    """Which problems (``--env.taskset.*``)."""

    task_name: str = "gsm8k"
    """The azgym task: gsm8k, arithmetic or countdown."""
    data: str = ""
    """The task's data: a GSM8K .jsonl/.parquet file, folder or Hub id (default openai/gsm8k); an
    arithmetic level (add2, default) or level:count; a countdown level (3, default)."""
    split: str = "test"
    """train or test."""
    num_examples: int | None = Field(None, ge=1)
    """Use the first N problems of the split (default: all); vf-eval's -n also limits the run."""
    prompt: str = "task"
    """The solve prompt's system message: task (the task's own), bare (none) or the text itself."""
    task: AzgymTaskConfig = AzgymTaskConfig()

    @field_validator("task_name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        get_task(name)  # an unknown name raises, listing the known ones
        return name


class AzgymTask(vf.Task[AzgymData, vf.State, AzgymTaskConfig]):
    """One problem and the rubric (see the module docs)."""

    @property
    def key(self) -> str:
        return self.data.id or self.hash  # the problem's id, stable across runs

    def _grade(self, reply: str):
        return get_task(self.data.task_name).grade(reply, self.data.answer)

    @vf.reward(weight=CORRECTNESS_WEIGHT)
    async def correct(self, trace: vf.Trace) -> float:
        grade = self._grade(trace.last_reply)
        return float(grade.correct if self.config.answer == "strict" else grade.flexible_correct)

    @vf.reward(weight=PERPLEXITY_WEIGHT)
    async def perplexity(self, trace: vf.Trace) -> float:
        name = scoring_model_name(self.config.tier, self.config.scoring_model)
        question = self.data.prompt_text
        return await score_response(name, self.config.device, self.data.system_prompt, question, trace.last_reply)

    @vf.metric
    async def format_ok(self, trace: vf.Trace) -> float:
        return float(self._grade(trace.last_reply).format_ok)

    def hooks(self, attr: str):
        """The task's hooks, without the perplexity reward when ``use_student_model`` is off."""
        hooks = super().hooks(attr)
        if attr == "reward" and not self.config.use_student_model:
            return [fn for fn in hooks if fn.__name__ != "perplexity"]
        return hooks


class AzgymTaskset(vf.Taskset[AzgymTask, AzgymConfig]):
    """azgym's problems of one task and split, in the registry's order."""

    def load(self) -> list[AzgymTask]:
        config = self.config
        problems = load_problems(config.task_name, config.data, config.split)[: config.num_examples]
        system = system_prompt(config.task_name, config.prompt)
        if not isinstance(system, str | None):
            raise ValueError(f"prompt {config.prompt!r} is a chat of several messages, and a verifiers task holds one "
                             "system message: use task, bare or the message text")  # fmt: skip
        return [
            AzgymTask(
                AzgymData(id=p.id, prompt=p.question, system_prompt=system, answer=p.gold, task_name=config.task_name),
                config.task,
            )
            for p in problems
        ]


def load_environment(
    task: str = "gsm8k",
    *,
    tier: str = "local",
    use_student_model: bool = True,
    num_examples: int | None = None,
    split: str = "test",
    data: str = "",
    prompt: str = "task",
    answer: str = "strict",
    scoring_model: str = "",
    device: str = "cpu",
) -> vf.Env:
    """The verifiers environment (a single-agent env over :class:`AzgymTaskset`) from the seed's
    keyword arguments; ``vf-eval azgym-verifiers`` builds the same from ``--env.taskset.*`` flags."""
    scoring = {"answer": answer, "tier": tier, "use_student_model": use_student_model,
               "scoring_model": scoring_model, "device": device}  # fmt: skip
    taskset = {"id": TASKSET_ID, "task_name": task, "data": data, "split": split, "num_examples": num_examples,
               "prompt": prompt, "task": scoring}  # fmt: skip
    return vf.load_environment(vf.resolve_env_config({"taskset": taskset}))


__all__ = ["AzgymConfig", "AzgymData", "AzgymTask", "AzgymTaskConfig", "AzgymTaskset", "load_environment"]
