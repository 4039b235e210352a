"""The AlphaZero run's config: one nested, documented, validated dataclass and its presets.

``RunConfig`` = ``env`` (:class:`~azgym.config.EnvConfig`) + ``search``
(:class:`~agents.mcts.SearchConfig`) + ``student`` (:class:`~agents.student.StudentConfig`) +
``learner`` (:class:`~agents.training.learner.LearnerConfig`) + ``loop`` (:class:`LoopConfig`).
Each field's default and meaning live in exactly one place, its section; ``scripts/selfplay.py``
generates its flags from them (:mod:`azgym.cli`). Presets are plain functions returning a whole
config: ``cpu`` (the default: a 2-core laptop, 2-digit addition, minutes) and ``gpu`` (GSM8K, the
seed system's 5 + 5 candidates, bigger batches). ``config.json`` of a run holds the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from agents.mcts.search import SearchConfig
from agents.student.model import StudentConfig
from agents.training.learner import LearnerConfig
from azgym.cli import Alias
from azgym.config import EnvConfig, check_fields, option, raise_problems


@dataclass(frozen=True)
class LoopConfig:
    """The loop: iterations of self-play, training, evaluation and checkpoints, and where they go."""

    run_name: str = option("selfplay", "the run directory is <runs-dir>/<run-name>")
    runs_dir: str = option("runs", "folder of all runs (tensorboard --logdir runs)")
    resume: bool = option(False, "continue <runs-dir>/<run-name> from its newest checkpoint")
    iterations: int = option(6, "AlphaZero iterations: self-play, then training, then evaluation")
    num_examples: int = option(2, "problems per iteration")
    group_size: int = option(4, "episodes per problem (the GRPO group); all are searched in lockstep")
    agent: str = option("mcts", "who plays self-play: mcts, or similarity (the seed's epsilon-greedy pick of the "
                        "candidate nearest the student's own step)", choices=("mcts", "similarity"))  # fmt: skip
    epsilon: float = option(0.3, "similarity agent: probability of a random candidate")
    train_steps: int = option(4, "learner steps per iteration")
    groups_per_step: int = option(2, "problem groups drawn from the replay per learner step")
    value_target: str = option("outcome", "value-head target: outcome (+1 solved, -1 not) or q (the MCTS Q of "
                               "the move taken)", choices=("outcome", "q"))  # fmt: skip
    capacity_iterations: int = option(4, "replay shards (iterations) kept on disk")
    eval_every: int = option(3, "evaluate every N iterations and after the last (0: never)")
    eval_base: bool = option(True, "evaluate the base model before the first iteration (--no-eval-base to skip)")
    eval_size: int = option(200, "held-out problems per evaluation (greedy; 200 keeps the 95% interval under "
                            "+-7 points)")  # fmt: skip
    eval_max_tokens: int = option(64, "response tokens per problem at evaluation")
    save_every: int = option(1, "checkpoint every N iterations (the last one always)")
    checkpoint_dir: str = option("", "checkpoint folder ('' = <runs-dir>/<run-name>/checkpoints)")
    log_interval: int = option(1, "learner steps between scalar logs")
    seed: int = option(0, "seeds problems, episodes, the search's noise and torch")
    budget_min: float = option(0.0, "stop, with a checkpoint, after the iteration that passes this many minutes "
                               "(0: no limit)")  # fmt: skip
    progress: bool = option(True, "show tqdm progress bars (--no-progress for logs only)")

    def __post_init__(self):
        at_least_one = ("iterations", "num_examples", "group_size", "train_steps", "groups_per_step", "eval_size",
                        "eval_max_tokens", "save_every", "log_interval", "capacity_iterations")  # fmt: skip
        raise_problems(self, check_fields(self, {
            **{name: (getattr(self, name) >= 1, ">= 1") for name in at_least_one},
            "eval_every": (self.eval_every >= 0, ">= 0"),
            "epsilon": (0 <= self.epsilon <= 1, "in [0, 1]"),
            "budget_min": (self.budget_min >= 0, ">= 0"),
            "run_name": (bool(self.run_name.strip()) and "/" not in self.run_name, "a non-empty name without '/'"),
        }))  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """The AlphaZero loop: self-play with MCTS -> replay -> GRPO + value training -> evaluation -> checkpoint."""

    env: EnvConfig = field(default_factory=lambda: EnvConfig(
        task="arithmetic", num_right=2, num_wrong=1, chunk_tokens=16, max_steps=4, max_tokens=64,
        rewards="outcome", answer="flexible", prompt="bare"))  # fmt: skip
    search: SearchConfig = field(default_factory=lambda: SearchConfig(num_simulations=4))
    student: StudentConfig = field(default_factory=StudentConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        problems = []
        if self.learner.loss == "grpo" and self.loop.group_size < 2:
            problems.append(("loop.group_size", "must be >= 2 for GRPO (advantages are relative within a group); "
                             "raise it or use --loss legacy"))  # fmt: skip
        raise_problems(self, problems)


def cpu_preset() -> RunConfig:
    """A 2-core laptop: 2-digit addition (the bare question, the last number as the answer), 2 + 1 candidates
    of <= 16 tokens, 4 simulations, 6 iterations: ~9 minutes that visibly learn."""
    return RunConfig()


def gpu_preset() -> RunConfig:
    """One GPU: GSM8K, the seed system's 5 + 5 candidates, 32 simulations, 16 problems x 8 episodes."""
    cpu = cpu_preset()
    return replace(
        cpu,
        env=replace(cpu.env, task="gsm8k", num_right=5, num_wrong=5, chunk_tokens=48, max_steps=12, max_tokens=256,
                    answer="strict", prompt="task"),  # fmt: skip
        search=replace(cpu.search, num_simulations=32, leaves_per_round=4),
        student=replace(cpu.student, device="cuda"),
        learner=replace(cpu.learner, micro_batch_size=16),
        loop=replace(
            cpu.loop,
            iterations=50,
            num_examples=16,
            group_size=8,
            train_steps=8,
            groups_per_step=8,
            eval_size=200,
            eval_max_tokens=256,
            save_every=5,
        ),  # fmt: skip
    )


PRESETS = {"cpu": cpu_preset, "gpu": gpu_preset}

# the seed system's flags, kept as aliases that do what they say
ALIASES = (
    Alias("--use-grpo", "learner.loss", "grpo", "the GRPO loss (same as --loss grpo)"),
    Alias("--use-legacy", "learner.loss", "legacy", "reward-weighted supervised learning (same as --loss legacy)"),
    Alias(
        "--distill", "learner.distill_coef", 0.5, "add the MCTS visit-distillation loss (same as --distill-coef 0.5)"
    ),
)
