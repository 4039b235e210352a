"""The AlphaZero run's config: one nested, documented, validated dataclass and its presets.

``RunConfig`` = ``env`` (:class:`~azgym.config.EnvConfig`) + ``search``
(:class:`~agents.mcts.SearchConfig`) + ``student`` (:class:`~agents.student.StudentConfig`) +
``learner`` (:class:`~agents.training.learner.LearnerConfig`) + ``loop`` (:class:`LoopConfig`).
Each field's default and meaning live in exactly one place, its section; ``scripts/selfplay.py``
generates its flags from them (:mod:`azgym.cli`). Presets are plain functions returning a whole
config: ``cpu`` (the default: a 2-core laptop, 2-digit addition, minutes), ``gpu`` (GSM8K, the
seed system's 5 + 5 candidates, bigger batches) and ``countdown`` (A*PO on Countdown with partial
credit and a sampling-temperature schedule, a 2-core laptop). ``config.json`` of a run holds the
resolved values.
"""

from __future__ import annotations

import importlib.util
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
    group_size: int = option(4, "moves self-play: episodes per problem (the GRPO group); all are searched in lockstep")
    selfplay: str = option(
        "adaptive",
        "self-play: adaptive (the default: cheap groups drawn from the priors "
        "without search, the MCTS only on groups where every episode failed, a solved path it "
        "finds joining its group; learner steps only on groups whose returns differ; "
        "agents/alphazero/adaptive.py), moves (group_size episodes per problem, a search per move, "
        "the played path trained) or tree (one search tree per problem, every node rolled out by "
        "the student and every response trained with the tree's step advantages; needs "
        "--simulations >= 2)",
        choices=("adaptive", "moves", "tree"),
    )
    rescue_budget: int = option(
        32,
        "adaptive: search simulations per iteration for the all-fail groups; each "
        "searched problem takes --rescue-simulations of them (0: no search, the solution "
        "cache alone)",
    )
    rescue_simulations: int = option(
        8,
        "adaptive: simulations of the one search tree grown from an all-fail "
        "problem's root (the per-problem cap); every solved terminal node in it is a "
        "found path",
    )
    rescue_leaves_per_round: int = option(
        4, "adaptive: descents per rescue tree and round (virtual loss): fewer, larger batched model calls"
    )
    solution_cache: int = option(
        4,
        "adaptive: verified responses (found by search or sampling) kept per problem, "
        "reused when its group fails again; saved with checkpoints (0: no cache)",
    )
    skip_solved: int = option(
        4,
        "adaptive: iterations a problem whose whole group solved is left out of the draw "
        "(predicted zero variance; 0: never skipped)",
    )
    dynamic_sampling: bool = option(
        False,
        "learner steps draw only groups whose returns differ (DAPO's dynamic "
        "sampling: a group with equal returns has no advantage); an iteration with no "
        "such group in the replay skips its learner steps (always on under --selfplay "
        "adaptive)",
    )
    leaf_value: str = option(
        "value",
        "moves self-play: what a live leaf of the search is worth: value (the "
        "student's value head) or rollout (the student rolls the leaf out under the solve prompt "
        "to a graded end, Monte Carlo as tree self-play does; the grader sees the gold answer, "
        "so training only)",
        choices=("value", "rollout"),
    )
    rollout_temperature: float = option(
        0.7,
        "rolled-out leaves (tree self-play, --leaf-value rollout): sampling "
        "temperature of the student's rollouts (0.7: the teachers' 'right' "
        "candidates' temperature)",
    )
    value_weight: float = option(
        0.0,
        "rolled-out leaves (tree self-play, --leaf-value rollout): weight of the value head in the leaf values "
        "the search backs up, (1 - w) * rollout outcome + w * value head (0: Monte Carlo only)",
    )
    branch_entropy: float = option(
        0.0,
        "tree self-play: branch only at nodes whose candidates' priors have a "
        "normalised entropy H / log K of at least this, elsewhere search the most likely "
        "step alone (0: branch at every node)",
    )
    agent: str = option(
        "mcts",
        "who plays self-play: mcts, or similarity (the seed's epsilon-greedy pick of the "
        "candidate nearest the student's own step)",
        choices=("mcts", "similarity"),
    )
    epsilon: float = option(0.3, "similarity agent: probability of a random candidate")
    train_steps: int = option(4, "learner steps per iteration")
    groups_per_step: int = option(2, "problem groups drawn from the replay per learner step")
    value_target: str = option(
        "outcome",
        "value-head target: outcome (+1 solved, -1 not) or q (the MCTS Q of the move taken)",
        choices=("outcome", "q"),
    )
    capacity_iterations: int = option(4, "replay shards (iterations) kept on disk")
    eval_every: int = option(3, "evaluate every N iterations and after the last (0: never)")
    eval_base: bool = option(True, "evaluate the base model before the first iteration (--no-eval-base to skip)")
    eval_size: int = option(
        200, "held-out problems per evaluation (greedy; 200 keeps the 95% interval under +-7 points)"
    )
    eval_max_tokens: int = option(64, "response tokens per problem at evaluation")
    save_every: int = option(1, "checkpoint every N iterations (the last one always)")
    checkpoint_dir: str = option("", "checkpoint folder ('' = <runs-dir>/<run-name>/checkpoints)")
    log_interval: int = option(1, "learner steps between scalar logs")
    seed: int = option(0, "seeds problems, episodes, the search's noise and torch")
    budget_min: float = option(
        0.0, "stop, with a checkpoint, after the iteration that passes this many minutes (0: no limit)"
    )
    progress: bool = option(True, "show tqdm progress bars (--no-progress for logs only)")
    temperature_start: float | None = option(
        None,
        "self-play sampling temperature of the candidates at the first "
        "iteration, annealed linearly to --temperature-end at the last "
        "(none: off, the proposer's own temperatures)",
    )
    temperature_end: float | None = option(
        None, "self-play sampling temperature at the last iteration (none: off; set both or neither)"
    )
    workers: int = option(
        0,
        "self-play in N Ray actors, each with its own env and student copy; the learner stays "
        "in this process (0: self-play in this process, Ray never imported; needs "
        "pip install 'azgym[ray]')",
    )
    ray_address: str = option(
        "", "with --workers: the Ray cluster to join (e.g. ray://head:10001 or auto; '': start a local Ray instance)"
    )

    @property
    def learns_differing_groups_only(self) -> bool:
        """Whether learner steps draw only groups whose returns differ (``dynamic_sampling``, or adaptive)."""
        return self.dynamic_sampling or self.selfplay == "adaptive"

    def __post_init__(self):
        at_least_one = (
            "iterations",
            "num_examples",
            "group_size",
            "train_steps",
            "groups_per_step",
            "eval_size",
            "eval_max_tokens",
            "save_every",
            "log_interval",
            "capacity_iterations",
        )
        raise_problems(
            self,
            check_fields(
                self,
                {
                    **{name: (getattr(self, name) >= 1, ">= 1") for name in at_least_one},
                    "eval_every": (self.eval_every >= 0, ">= 0"),
                    "epsilon": (0 <= self.epsilon <= 1, "in [0, 1]"),
                    "value_weight": (0 <= self.value_weight <= 1, "in [0, 1]"),
                    "rollout_temperature": (self.rollout_temperature > 0, "> 0"),
                    "leaf_value": (
                        self.leaf_value == "value" or self.selfplay == "moves",
                        "value unless --selfplay moves (a tree's leaves are always rolled out; adaptive "
                        "self-play's rescue search values its leaves by the value head)",
                    ),
                    "branch_entropy": (0 <= self.branch_entropy <= 1, "in [0, 1] (a normalised entropy)"),
                    **{name: (getattr(self, name) >= 0, ">= 0") for name in ("solution_cache", "skip_solved")},
                    "rescue_simulations": (self.rescue_simulations >= 2, ">= 2 (a search that can look past the root)"),
                    "rescue_budget": (
                        self.rescue_budget == 0 or self.rescue_budget >= self.rescue_simulations,
                        f"0 or >= --rescue-simulations ({self.rescue_simulations}: one problem's tree)",
                    ),
                    "rescue_leaves_per_round": (self.rescue_leaves_per_round >= 1, ">= 1"),
                    "dynamic_sampling": (
                        not self.dynamic_sampling or self.selfplay != "tree",
                        "off under --selfplay tree (a tree is one group of one root)",
                    ),
                    "budget_min": (self.budget_min >= 0, ">= 0"),
                    "workers": (
                        self.workers >= 0 and (self.workers == 0 or self.selfplay != "adaptive"),
                        ">= 0, and 0 under --selfplay adaptive (its rescue search and solution cache live in this "
                        "process; pass --selfplay moves for Ray workers)",
                    ),
                    "ray_address": (
                        not self.ray_address or self.workers > 0,
                        "'' without --workers (no Ray without workers)",
                    ),
                    "run_name": (
                        bool(self.run_name.strip()) and "/" not in self.run_name,
                        "a non-empty name without '/'",
                    ),
                    **{
                        name: (
                            (self.temperature_start is None) == (self.temperature_end is None)
                            and (getattr(self, name) is None or getattr(self, name) > 0),
                            "> 0, with temperature_start and temperature_end both set or both none",
                        )
                        for name in ("temperature_start", "temperature_end")
                    },
                },
            )
            + _ray_missing(self.workers),
        )


def _ray_missing(workers: int) -> list[tuple[str, str]]:
    """The problem of asking for workers without Ray installed (found without importing it)."""
    if workers > 0 and importlib.util.find_spec("ray") is None:
        return [("workers", "needs Ray, which is not installed: pip install 'azgym[ray]' (or -e \".[ray]\")")]
    return []


def sampling_temperature(loop: LoopConfig, iteration: int) -> float | None:
    """The self-play sampling temperature of ``iteration`` (0-based): linear from ``temperature_start``
    at the first iteration to ``temperature_end`` at the last (``loop.iterations - 1``); None when the
    schedule is off. A pure function of the iteration index, so a resumed run samples alike; it spans
    ``loop.iterations``, so a resume that changes ``--iterations`` re-spans it.

    It is the candidates' generation temperature (both teacher prompts; see
    :meth:`azgym.teachers.TeacherEnsemble.set_temperature`): with one candidate per state and no
    search it is the temperature of the policy's own rollout (A*PO). The move among candidates is
    still drawn from the agent's policy as it is (MCTS: ``--search-temperature``).
    """
    if loop.temperature_start is None or loop.temperature_end is None:
        return None
    fraction = iteration / (loop.iterations - 1) if loop.iterations > 1 else 0.0
    return loop.temperature_start + (loop.temperature_end - loop.temperature_start) * min(max(fraction, 0.0), 1.0)


@dataclass(frozen=True)
class RunConfig:
    """The AlphaZero loop: self-play with MCTS -> replay -> GRPO + value training -> evaluation -> checkpoint."""

    env: EnvConfig = field(
        default_factory=lambda: EnvConfig(
            task="arithmetic",
            num_right=2,
            num_wrong=1,
            chunk_tokens=16,
            max_steps=4,
            max_tokens=64,
            rewards="outcome",
            answer="flexible",
            prompt="bare",
        )
    )
    search: SearchConfig = field(default_factory=lambda: SearchConfig(num_simulations=4))
    student: StudentConfig = field(default_factory=StudentConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        problems = []
        if self.learner.loss == "grpo" and self.loop.group_size < 2:
            problems.append(
                (
                    "loop.group_size",
                    "must be >= 2 for GRPO (advantages are relative within a group); raise it or use --loss legacy",
                )
            )
        if self.loop.selfplay == "adaptive" and self.loop.group_size < 2 and not problems:
            problems.append(
                (
                    "loop.group_size",
                    "must be >= 2 under --selfplay adaptive (an all-fail group is what it searches for)",
                )
            )
        if self.loop.selfplay == "tree" and not self.search.searches:
            why = (
                f"must be >= 2 under --selfplay tree (a tree of one simulation is no tree), got "
                f"{self.search.num_simulations}; raise --simulations or use --selfplay moves for the priors' draw"
            )
            problems.append(("search.num_simulations", why))
        if self.learner.loss == "apo" and self.learner.apo_normalize and self.loop.group_size < 2:
            problems.append(
                (
                    "loop.group_size",
                    "must be >= 2 for apo_normalize (advantages are relative within "
                    "a group); raise it or use --no-apo-normalize",
                )
            )
        raise_problems(self, problems)


def cpu_preset() -> RunConfig:
    """A 2-core laptop: 2-digit addition (the bare question, the last number as the answer), 2 + 1 candidates
    of <= 16 tokens, adaptive self-play (the rescue search: 8 simulations per all-fail problem, 32 per iteration),
    6 iterations: minutes that visibly learn."""
    return RunConfig()


def gpu_preset() -> RunConfig:
    """One GPU: GSM8K, the seed system's 5 + 5 candidates, 32 simulations, 16 problems x 8 episodes."""
    cpu = cpu_preset()
    env = replace(
        cpu.env,
        task="gsm8k",
        num_right=5,
        num_wrong=5,
        chunk_tokens=48,
        max_steps=12,
        max_tokens=256,
        answer="strict",
        prompt="task",
    )
    return replace(
        cpu,
        env=env,
        search=replace(cpu.search, num_simulations=32, leaves_per_round=4),
        student=replace(cpu.student, device="cuda"),
        learner=replace(cpu.learner, micro_batch_size=16),
        loop=replace(
            cpu.loop,
            selfplay="moves",  # the seed system's search on every move; adaptive is measured on the CPU only
            iterations=50,
            num_examples=16,
            group_size=8,
            train_steps=8,
            groups_per_step=8,
            eval_size=200,
            eval_max_tokens=256,
            save_every=5,
        ),
    )


def countdown_preset() -> RunConfig:
    """A*PO on Countdown (3 numbers) on a 2-core CPU: the seed's online rollout, about a minute an iteration.

    Each of 4 problems gets 4 samples (the group); a sample is the student's own response (one
    candidate per step, written under the solve prompt: ``right_prompt="solve"``) and no search
    (``--simulations 1``: A*PO is an on-policy method, and an untrained value head would only slow
    the rollout down), generated at a temperature annealed
    1.0 -> 0.3 over the 6 iterations. The terminal reward is the partial credit (``-1 + 2c``, the
    ``partial`` preset); the loss is A*PO's ``-A log pi + beta KL`` to the initial policy (the frozen
    base under LoRA) with A the group-normalised advantage; no value loss (no search reads the value).
    The solve prompt shows one worked example (the ``example`` style): under the task prompt alone
    SmolLM2-135M never wrote an ``<answer>`` block (0 of 200), so every reward was the same.
    """
    cpu = cpu_preset()
    env = replace(
        cpu.env,
        task="countdown",
        data="3",
        num_right=1,
        num_wrong=0,
        right_prompt="solve",
        chunk_tokens=32,
        max_steps=4,
        max_tokens=96,
        rewards="partial",
        answer="strict",
        prompt="example",
    )
    loop = replace(
        cpu.loop,
        selfplay="moves",
        num_examples=4,
        group_size=4,
        groups_per_step=4,
        eval_max_tokens=96,
        temperature_start=1.0,
        temperature_end=0.3,
    )
    learner = replace(cpu.learner, loss="apo", apo_normalize=True, normalize_std=True, value_coef=0.0)
    return replace(cpu, env=env, search=replace(cpu.search, num_simulations=1), learner=learner, loop=loop)


PRESETS = {"cpu": cpu_preset, "gpu": gpu_preset, "countdown": countdown_preset}

# the seed system's flags, kept as aliases that do what they say
ALIASES = (
    Alias("--use-grpo", "learner.loss", "grpo", "the GRPO loss (same as --loss grpo)"),
    Alias("--use-legacy", "learner.loss", "legacy", "reward-weighted supervised learning (same as --loss legacy)"),
    Alias(
        "--distill", "learner.distill_coef", 0.5, "add the MCTS visit-distillation loss (same as --distill-coef 0.5)"
    ),
)
