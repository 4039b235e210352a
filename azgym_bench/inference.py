"""Inference-time compute: greedy, maj@k and blind tree search on held-out problems, at matched generated tokens.

    python scripts/bench_inference.py                                  # 200 held-out add2 problems, the base model
    python scripts/bench_inference.py --checkpoint runs/demo --which best --budgets 64,128,256
    python scripts/bench_inference.py --search-root gumbel --budgets 64,128 --budget-simulations 4,8

Rows: greedy decoding; then for each ``--budgets`` B, the tree search with the paired
``--budget-simulations`` S (``scripts/evaluate.py --mode tree --simulations S --token-budget B``: a
search of S simulations per move, ``--batch-size`` problems in lockstep, finished responses valued
without the gold answer, the student finishing greedily once B tokens are spent; the budget is
checked between moves, so a move's search may overrun it, and the measured tokens are reported) and maj@k
with k = round(the tree's measured tokens / greedy's tokens per problem), so both spend about the
same generated tokens. Generated tokens are every token the teachers or the student sampled; the
prior-scoring and value passes (prefill) are not counted, so seconds per problem are printed beside
them. The env, search and student flags are evaluate.py's (``--preset cpu``: add2, the bare question,
the last number as the answer). Prints the table and writes ``--out`` (docs/bench_inference.json).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from agents.alphazero.tree_eval import TERMINAL_VALUES
from agents.mcts import SearchConfig
from agents.student import StudentConfig
from agents.training.checkpoint import CHECKPOINT_CHOICES, CheckpointError, resolve_checkpoint
from azgym.cli import parse_config
from azgym.config import EnvConfig, check_fields, option, raise_problems
from azgym.tasks import load_problems


def _evaluate_script():
    """scripts/evaluate.py as a module (its config, presets, student loading and evaluation run; the one
    benchmark that still reads a script: evaluate.py's body is not yet a module of its own)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is defined
    spec.loader.exec_module(module)
    return module


EVALUATE = _evaluate_script()


@dataclass(frozen=True)
class BenchOptions:
    """What is compared, on which problems."""

    split: str = option("test", "split of the task's data")
    size: int = option(200, "held-out problems (the first N of the split)")
    checkpoint: str = option("", "a checkpoint written by selfplay.py (a step-N or best directory, or a run directory)")
    which: str = option("newest", "with a run directory: its newest or best checkpoint", choices=CHECKPOINT_CHOICES)
    budgets: tuple[str, ...] = option(("64", "128", "256"), "the tree search's generated-token budgets per problem; "
                                      "maj@k is matched to each")  # fmt: skip
    budget_simulations: tuple[str, ...] = option(("4", "8", "16"), "simulations per move at each budget (one per "
                                                 "budget, or one for all)")  # fmt: skip
    terminal_value: str = option("auto", "how the search values a finished response without the gold answer "
                                 "(see evaluate.py)", choices=TERMINAL_VALUES)  # fmt: skip
    batch_size: int = option(32, "problems decoded or searched together")
    seed: int = option(0, "seeds sampling and the search")
    out: str = option("docs/bench_inference.json", "JSON result path")

    def __post_init__(self):
        budgets_ok = all(b.isdigit() and int(b) >= 1 for b in self.budgets) and len(self.budgets) >= 1
        sims_ok = all(b.isdigit() and int(b) >= 1 for b in self.budget_simulations)
        raise_problems(self, check_fields(self, {
            "size": (self.size >= 1, ">= 1"),
            "budgets": (budgets_ok, "a comma list of integers >= 1, e.g. 64,128,256"),
            "budget_simulations": (sims_ok and len(self.budget_simulations) in (1, len(self.budgets)),
                                   f"{len(self.budgets)} integers >= 1 (one per budget) or one for all"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
        }))  # fmt: skip


@dataclass(frozen=True)
class BenchInferenceConfig:
    """Greedy, maj@k and blind tree search on held-out problems at matched generated tokens."""

    env: EnvConfig = field(default_factory=lambda: EVALUATE.PRESETS["cpu"]().env)
    search: SearchConfig = field(default_factory=lambda: EVALUATE.PRESETS["cpu"]().search)
    student: StudentConfig = field(default_factory=StudentConfig)
    bench: BenchOptions = field(default_factory=BenchOptions)


def _preset(name: str):
    def preset() -> BenchInferenceConfig:
        evaluation = EVALUATE.PRESETS[name]()
        return BenchInferenceConfig(evaluation.env, evaluation.search, evaluation.student)

    return preset


PRESETS = {name: _preset(name) for name in EVALUATE.PRESETS}


def row(method: str, setting: str, result: dict, seconds: float) -> dict:
    keep = ("accuracy", "accuracy_low", "accuracy_high", "format_accuracy", "tokens_per_problem")
    return {"method": method, "setting": setting, **{k: result[k] for k in keep},
            "seconds_per_problem": seconds / max(result["num_problems"], 1)}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [f"{'method':8s} {'setting':24s} {'accuracy (95% CI)':20s} {'tokens/problem':>15s} {'s/problem':>10s}"]
    for r in rows:
        interval = f"{r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f})"
        lines.append(f"{r['method']:8s} {r['setting']:24s} {interval:20s} {r['tokens_per_problem']:15.1f} "
                     f"{r['seconds_per_problem']:10.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    config = parse_config(BenchInferenceConfig, argv, presets=PRESETS, default_preset="cpu")
    bench = config.bench
    if bench.checkpoint:
        try:
            bench = replace(bench, checkpoint=str(resolve_checkpoint(bench.checkpoint, bench.which)))
        except CheckpointError as err:
            raise SystemExit(f"bench_inference.py: error: --checkpoint {bench.checkpoint}: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = EVALUATE.EvalOptions(split=bench.split, size=bench.size, checkpoint=bench.checkpoint,
                                   terminal_value=bench.terminal_value, batch_size=bench.batch_size,
                                   seed=bench.seed)  # fmt: skip
    evaluation = EVALUATE.EvaluateConfig(config.env, config.search, config.student, options)
    student = EVALUATE.build(evaluation, trained=bool(bench.checkpoint))
    problems = load_problems(config.env.task, config.env.data, bench.split)[: bench.size]

    def timed(**overrides) -> tuple[dict, float]:
        start = time.perf_counter()
        result = EVALUATE.run(evaluation, student, problems, **overrides)
        return result, time.perf_counter() - start

    greedy, seconds = timed(mode="greedy")
    rows = [row("greedy", "", greedy, seconds)]
    per_sample = max(greedy["tokens_per_problem"], 1.0)
    sims = bench.budget_simulations * (len(bench.budgets) if len(bench.budget_simulations) == 1 else 1)
    for budget, simulations in zip((int(b) for b in bench.budgets), (int(s) for s in sims), strict=True):
        searching = replace(evaluation, search=replace(config.search, num_simulations=simulations))
        tree, seconds = timed(mode="tree", agent=EVALUATE.blind_search(searching, student, token_budget=budget))
        rows.append(row("tree", f"{simulations} sims, budget {budget}", tree, seconds))
        k = max(1, round(tree["tokens_per_problem"] / per_sample))
        majority, seconds = timed(mode="majority", k=k)
        rows.append(row(f"maj@{k}", f"matches budget {budget}", majority, seconds))
    search = config.search
    header = (f"{config.env.task} {bench.split}, {len(problems)} problems, answer {config.env.answer}, model "
              f"{bench.checkpoint or config.student.model}; tree: {search.root} search per move, finished responses "
              "valued without the gold answer")  # fmt: skip
    out = Path(bench.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "config": asdict(config), "rows": rows}, indent=1))
    print(header)
    print(table(rows))
    print(f"results: {out}")
