"""Evaluate a student (base or trained) on held-out problems and compare.

    python scripts/evaluate.py --task arithmetic --data add2 --size 200
    python scripts/evaluate.py --checkpoint runs/selfplay/checkpoints/step-000008 --compare-base
    python scripts/evaluate.py --checkpoint runs/selfplay --which best   # the run's best held-out checkpoint
    python scripts/evaluate.py --adapter OUT_DIR          # a peft LoRA adapter (e.g. the TRL baseline's)
    NUM_MCTS_ITERATIONS=2 python scripts/evaluate.py --mode tree --size 4
    python scripts/evaluate.py --mode tree --token-budget 128 --search-root gumbel --simulations 8

Modes: greedy (default), majority (maj@k of sampled responses), best_of_n (k samples reranked by
the value head), tree (alias mcts: a search per move, ``--simulations`` or ``NUM_MCTS_ITERATIONS``,
no root noise, the most visited move or Gumbel's selected action; ``--batch-size`` problems in
lockstep). The tree search never sees the gold answer: finished responses are valued by the value
head or by answer agreement (``--terminal-value``), and only the final responses are graded; with
``--token-budget`` a problem stops searching once its teachers generated that many tokens and the
student finishes greedily (scripts/bench_inference.py compares it with greedy and maj@k at matched
generated tokens). The env, search and student flags are the self-play run's (same names, same
defaults per ``--preset``; a checkpoint brings its own student settings, but runs at ``--device`` and
``--precision``). Writes a JSON result with every response and prints a summary table;
with --compare-base the base model is evaluated too, side by side.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from agents.alphazero.config import PRESETS as RUN_PRESETS
from agents.alphazero.evaluate import METRICS, MODES, evaluate
from agents.alphazero.tree_eval import TERMINAL_VALUES, BlindSearch, head_is_trained
from agents.mcts import MCTS, SearchConfig
from agents.student import LMValueFunction, Student, StudentConfig
from agents.training.checkpoint import (
    CHECKPOINT_CHOICES,
    CheckpointError,
    build_student,
    load_student,
    resolve_checkpoint,
)
from agents.warmstart.record import check_record, record_stage, three_way_table
from azgym.cli import parse_config, run_script
from azgym.config import EnvConfig, check_fields, option, raise_problems
from azgym.env import ReasoningEnv
from azgym.tasks import get_task, load_problems


@dataclass(frozen=True)
class EvalOptions:
    """What is evaluated, on which problems, and how."""

    split: str = option("test", "split of the task's data")
    size: int = option(200, "held-out problems (the first N of the split)")
    checkpoint: str = option("", "a checkpoint written by selfplay.py: a step-N or best directory, or a run "
                             "directory / checkpoints folder (then --which picks)")  # fmt: skip
    which: str = option("newest", "with a run directory: its newest checkpoint or its best (by held-out accuracy "
                        "during the run)", choices=CHECKPOINT_CHOICES)  # fmt: skip
    adapter: str = option("", "a peft LoRA adapter directory on --model")
    compare_base: bool = option(False, "evaluate the base model too, side by side")
    mode: str = option("greedy", "greedy, majority (maj@k), best_of_n (value-reranked) or tree (blind search; "
                       "mcts: the same)", choices=MODES)  # fmt: skip
    k: int = option(4, "samples per problem for majority / best_of_n")
    token_budget: int = option(0, "tree: generated tokens per problem the search may spend before the student "
                               "finishes greedily (0: no limit)")  # fmt: skip
    terminal_value: str = option("auto", "tree: how the search values a finished response without the gold answer: "
                                 "head (the value head), agreement (among the answers the search reached), auto "
                                 "(head if trained, else agreement)", choices=TERMINAL_VALUES)  # fmt: skip
    batch_size: int = option(32, "problems decoded (greedy, majority, best_of_n) or searched (tree) together")
    seed: int = option(0, "seeds sampling and the search")
    out: str = option("", "JSON result path ('' = eval-<mode>.json here)")
    record: str = option("", "also merge the figures into this pipeline record (e.g. docs/gsm8k_pipeline.json) as "
                         "--stage: the trained model's with --checkpoint/--adapter, else the base's")  # fmt: skip
    stage: str = option("", "the stage name in --record: base, sft, sft_rl, ...")

    def __post_init__(self):
        raise_problems(self, check_fields(self, {"size": (self.size >= 1, ">= 1"), "k": (self.k >= 1, ">= 1"),
                                                 "token_budget": (self.token_budget >= 0, ">= 0 (0: no limit)"),
                                                 "batch_size": (self.batch_size >= 1, ">= 1")}))  # fmt: skip


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a student (base or trained) on held-out problems and compare."""

    env: EnvConfig = field(default_factory=lambda: RUN_PRESETS["cpu"]().env)
    search: SearchConfig = field(default_factory=lambda: RUN_PRESETS["cpu"]().search)
    student: StudentConfig = field(default_factory=StudentConfig)
    evaluation: EvalOptions = field(default_factory=EvalOptions)


def _preset(name: str):
    def preset() -> EvaluateConfig:
        run = RUN_PRESETS[name]()
        # evaluation plays the most visited move with no root noise (Gumbel: its selected action)
        return EvaluateConfig(run.env, replace(run.search, temperature=0.0, dirichlet_fraction=0.0), run.student)

    return preset


PRESETS = {name: _preset(name) for name in RUN_PRESETS}


def build(config: EvaluateConfig, trained: bool) -> Student:
    options = config.evaluation
    if trained and options.checkpoint:
        # the checkpoint's model and weights, run on this command's device and in its precision
        return load_student(options.checkpoint, device=config.student.device, precision=config.student.precision)
    student = build_student(config.student)
    if trained and options.adapter:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(student.model, load_file(str(Path(options.adapter) / "adapter_model.safetensors")))
    return student


def blind_search(config: EvaluateConfig, student: Student, token_budget: int | None = None) -> BlindSearch:
    """The tree mode's search: leaves valued by the value head, finished responses by ``--terminal-value``."""
    options, lm = config.evaluation, student.backend()
    value_fn = LMValueFunction(lm, student.value_head)
    choice = options.terminal_value
    if choice == "auto":
        choice = "head" if head_is_trained(student.value_head) else "agreement"
    logging.getLogger(__name__).info("tree search: finished responses valued by %s (never the grade)", choice)
    budget = options.token_budget if token_budget is None else token_budget
    return BlindSearch(MCTS(config.search), value_fn, value_fn if choice == "head" else None, token_budget=budget)


def run(config: EvaluateConfig, student: Student, problems, **overrides) -> dict:
    """Evaluate ``student`` on ``problems``; ``overrides`` replace ``evaluate``'s arguments (``mode``, ``k``, ...)."""
    options, lm = config.evaluation, student.backend()
    kwargs = dict(mode=options.mode, k=options.k, max_tokens=config.env.max_tokens, seed=options.seed,
                  prompt=config.env.prompt, answer=config.env.answer, batch_size=options.batch_size)  # fmt: skip
    kwargs.update(overrides)
    if kwargs["mode"] == "best_of_n":
        kwargs["value_fn"] = LMValueFunction(lm, student.value_head).values_of
    if kwargs["mode"] in ("tree", "mcts"):
        kwargs["env"] = ReasoningEnv.from_config(config.env, model=lm, data=problems)
        kwargs.setdefault("agent", blind_search(config, student))
    with torch.no_grad():
        return evaluate(lm, problems, get_task(config.env.task), **kwargs)


def main(argv=None) -> None:
    config = parse_config(EvaluateConfig, argv, presets=PRESETS, default_preset="cpu")
    options = config.evaluation
    if options.adapter and not (Path(options.adapter) / "adapter_model.safetensors").is_file():
        raise SystemExit(f"evaluate.py: error: --adapter {options.adapter}: no adapter_model.safetensors there; "
                         "pass a directory saved by peft's save_pretrained")  # fmt: skip
    if options.checkpoint:
        try:
            config = replace(config, evaluation=replace(options, checkpoint=str(
                resolve_checkpoint(options.checkpoint, options.which))))  # fmt: skip
        except CheckpointError as err:
            raise SystemExit(f"evaluate.py: error: --checkpoint {options.checkpoint}: {err}") from None
        options = config.evaluation
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problems = load_problems(config.env.task, config.env.data, options.split)[: options.size]
    if bool(options.record.strip()) != bool(options.stage.strip()):
        raise SystemExit("evaluate.py: error: --record and --stage go together: --record FILE --stage NAME")
    if options.record:
        try:
            check_record(options.record, len(problems))
        except ValueError as err:
            raise SystemExit(f"evaluate.py: error: --record: {err}") from None
    results = {}
    if options.compare_base or not (options.checkpoint or options.adapter):
        results["base"] = run(config, build(config, trained=False), problems)
    if options.checkpoint or options.adapter:
        results["trained"] = run(config, build(config, trained=True), problems)
    out = Path(options.out or f"eval-{options.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    names = list(results)
    print(f"{config.env.task} {options.split}, {len(problems)} problems, mode {options.mode}, answer "
          f"{config.env.answer}" + (f", checkpoint {options.checkpoint}" if options.checkpoint else ""))  # fmt: skip
    if options.mode in ("tree", "mcts"):
        budget = f", a budget of {options.token_budget} generated tokens per problem" if options.token_budget else ""
        print(f"search: {config.search.root}, {config.search.num_simulations} simulations per move{budget}")
    print(f"{'metric':20s}" + "".join(f"{n:>12s}" for n in names))
    for metric in METRICS:
        print(f"{metric:20s}" + "".join(f"{results[n][metric]:12.3f}" for n in names))
    print(three_way_table(results))
    print(f"results: {out}")
    if options.record:
        name = "trained" if "trained" in results else "base"
        record_stage(options.record, options.stage, results[name], commit=_commit(), mode=options.mode,
                     answer=config.env.answer, checkpoint=options.checkpoint or options.adapter or "base",
                     max_tokens=config.env.max_tokens)  # fmt: skip
        print(f"recorded as stage {options.stage!r} in {options.record}")


def _commit() -> str:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(run_script("evaluate.py", main))
