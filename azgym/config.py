"""Settings: documented dataclass sections, validated in one place, and the seed system's
environment-variable overrides, read by one function.

A setting is a dataclass field made with :func:`option`: its default and a one-line meaning (the
``--help`` text of its flag, see :mod:`azgym.cli`). A section validates itself on construction and
raises :class:`ConfigError`, which lists every bad field with the rule it breaks. This module holds
the environment's section, :class:`EnvConfig`; the search, student, learner and loop sections live
beside the code they configure and follow the same conventions.

Environment variables (the seed system's names) override a section's default, never a value given
explicitly: ``NUM_MCTS_ITERATIONS`` (search simulations per move), ``MAX_TREE_DEPTH`` (steps per
episode) and ``MAX_TOKENS`` (response tokens per episode); see :data:`ENV_OVERRIDES`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from typing import Any

from azgym.errors import UserError
from azgym.prompts import RIGHT_PROMPTS

# environment variable -> (section, field) it overrides
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "NUM_MCTS_ITERATIONS": ("search", "num_simulations"),
    "MAX_TREE_DEPTH": ("env", "max_steps"),
    "MAX_TOKENS": ("env", "max_tokens"),
}


class ConfigError(UserError, ValueError):
    """Invalid settings. ``problems`` lists ``(field, what is wrong and the fix)`` pairs."""

    def __init__(self, problems: Iterable[tuple[str, str]], where: str = "settings"):
        self.problems = list(problems)
        super().__init__(f"invalid {where}: " + "; ".join(f"{name}: {why}" for name, why in self.problems))


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    choices: Iterable[str] | None = None,
) -> Any:
    """A documented setting: ``default``, a one-line ``help``, and optionally its command-line
    ``flag`` (default ``--field-name``), extra ``aliases`` and the allowed ``choices``."""
    metadata = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": tuple(choices or ())}
    return dataclasses.field(default=default, metadata=metadata)


def check_fields(config: Any, rules: dict[str, tuple[bool, str]]) -> list[tuple[str, str]]:
    """Problems of a section: every float must be finite, every ``choices`` respected, and each
    ``rules[name] = (holds, rule)`` that does not hold reported as ``must be <rule>``."""
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        choices = f.metadata.get("choices") or ()
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((f.name, f"must be a finite number, got {value}"))
        elif choices and value not in choices:
            problems.append((f.name, f"must be one of {', '.join(choices)}, got {value!r}"))
    bad = {name for name, _ in problems}
    problems += [
        (name, f"must be {rule}, got {getattr(config, name)!r}")
        for name, (holds, rule) in rules.items()
        if not holds and name not in bad
    ]
    return problems


def raise_problems(config: Any, problems: list[tuple[str, str]]) -> None:
    if problems:
        raise ConfigError(problems, type(config).__name__)


def env_override(variable: str, default: int, environ: dict[str, str] | None = None) -> int:
    """The integer in ``$variable`` if set, else ``default``; a value that is not an integer is a
    :class:`ConfigError` naming the variable. (Range checks belong to the section it sets.)"""
    raw = (os.environ if environ is None else environ).get(variable)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError([(variable, f"environment variable {variable}={raw!r} must be an integer")]) from None


def _task_names() -> tuple[str, ...]:
    from azgym.tasks import TASKS

    return tuple(sorted(TASKS))


def _partial_credit(task: str) -> bool:
    from azgym.tasks import get_task
    from azgym.tasks.base import has_partial_credit

    return has_partial_credit(get_task(task))


def _reward_presets() -> tuple[str, ...]:
    from azgym.rewards import REWARD_PRESETS

    return tuple(sorted(REWARD_PRESETS))


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The environment: which problems, how candidates are proposed, how episodes end and pay."""

    task: str = option("gsm8k", "the problems and their grader: gsm8k, arithmetic or countdown", choices=_task_names())
    data: str = option(
        "",
        "task data: a GSM8K file, folder or Hub id; an arithmetic level (add2); a countdown "
        "level (3, 4); '' = the task's own",
    )
    teachers: str = option(
        "",
        "proposing teachers: '' (the scoring model alone), a tier (local), model names or "
        "served models URL#MODEL (an OpenAI-compatible server, e.g. http://localhost:8000/v1#NAME)",
    )
    terminal: str = option(
        "rule",
        "what ends an episode: rule (answer marker, end of sequence) or model (also the model's 'is it complete?')",
        choices=("rule", "model"),
    )
    num_right: int = option(2, "candidates per state from the 'continue correctly' prompt")
    num_wrong: int = option(2, "candidates per state from the 'plausible mistake' prompt")
    right_prompt: str = option(
        "teacher",
        "what the scoring model's right candidates are written under: teacher (the "
        "'continue correctly' prompt) or solve (the plain solve prompt: its own next steps, "
        "whose priors come from sampling, no scoring pass)",
        choices=RIGHT_PROMPTS,
    )
    chunk_tokens: int = option(48, "most tokens in one step (a step ends at a newline)")
    max_steps: int = option(12, "steps per episode before it is truncated", aliases=("--max-depth",))
    max_tokens: int = option(256, "response tokens per episode before it is truncated")
    max_question_tokens: int = option(512, "size of the question observation in tokens")
    rewards: str = option(
        "seed",
        "reward preset: seed (HRE + PRE + shaping), outcome (+1 correct, -1 otherwise) "
        "or partial (the task's partial credit c in [0, 1] as -1 + 2c; countdown only)",
        choices=_reward_presets(),
    )
    answer: str = option(
        "strict",
        "what counts as the answer: strict (the '#### ' marker) or flexible "
        "(the last number; truncated episodes graded too)",
        choices=("strict", "flexible"),
    )
    prompt: str = option(
        "task",
        "solve prompt's system message: task (the task's own), bare (the question alone), "
        "example (the task's own and one worked example) or the message text",
    )

    def __post_init__(self):
        raise_problems(
            self,
            check_fields(
                self,
                {
                    "num_right": (self.num_right >= 0, ">= 0"),
                    "num_wrong": (
                        self.num_wrong >= 0 and self.num_right + self.num_wrong >= 1,
                        ">= 0, with num_right + num_wrong >= 1",
                    ),
                    "chunk_tokens": (self.chunk_tokens >= 1, ">= 1"),
                    "max_steps": (self.max_steps >= 1, ">= 1"),
                    "max_tokens": (self.max_tokens >= 1, ">= 1"),
                    "max_question_tokens": (self.max_question_tokens >= 1, ">= 1"),
                    "teachers": (
                        _served_names_ok(self.teachers),
                        "a tier, model names or served models URL#MODEL (an "
                        "http(s) URL without credentials: the API key goes in $OPENAI_API_KEY)",
                    ),
                    "prompt": (bool(self.prompt.strip()), "'task', 'bare', 'example' or a non-empty message"),
                    "rewards": (
                        self.rewards != "partial" or self.task not in _task_names() or _partial_credit(self.task),
                        f"a preset task {self.task} supports (partial needs a task with partial credit: "
                        f"{', '.join(n for n in _task_names() if _partial_credit(n))})",
                    ),
                },
            ),
        )


def _served_names_ok(teachers: str) -> bool:
    if "://" not in teachers:
        return True
    from azgym.lm.served import is_served, parse_served

    try:
        for name in teachers.split(","):
            if is_served(name.strip()):
                parse_served(name.strip())
    except ValueError:
        return False
    return True


ENV_DEFAULTS = EnvConfig()
