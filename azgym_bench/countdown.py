"""Countdown learning over seeds: A*PO, azgym's search loop and its no-search ablation, same problems, same budget.

    python scripts/bench_countdown.py --budget-min 25 --seeds 0,1,2                 # everything (~4 h on 2 cores)
    python scripts/bench_countdown.py --budget-min 25 --seeds 0 --learners apo      # one piece of it
    python scripts/bench_countdown.py --report-only --publish                        # table, docs/bench_countdown.json

Every learner trains on the same ``--train-size`` Countdown problems of ``--level`` (3 numbers by default) for
``--budget-min`` wall-clock minutes per seed, starting from SmolLM2-135M-Instruct; the project's evaluator
then answers the same ``--eval-size`` held-out problems greedily at ``--eval-points`` times of the run and
each answer is scored twice: exact (the strict reward: every number once, + - * / only, equal to the target)
and with the seed system's partial credit (``azgym.tasks.countdown.partial_credit``). Learners (``--learners``),
each ``scripts/selfplay.py --preset countdown`` plus:

- ``apo``: nothing (the preset: A*PO's ``-A log pi + beta KL``, 4 samples per problem, one candidate per
  step, no search, sampling temperature annealed 1.0 -> 0.3 over ``--iterations``);
- ``search``: azgym's own learner (the ``cpu`` preset's GRPO + value head) with MCTS per move, 4
  simulations over 2 right + 1 wrong candidates;
- ``simulations_1``: the same as ``search`` with ``--simulations 1`` (the no-search ablation);
- ``adaptive``: the same learner and candidates with adaptive self-play (``--selfplay adaptive
  --dynamic-sampling``: cheap groups from the priors, the MCTS only where no episode of a group solved exactly,
  learner steps only on groups whose returns differ).

Results are kept per (learner, seed) as ``scripts/bench_learning.py`` keeps them (a result on disk is never
run again; a run cut off is started afresh), so a benchmark longer than a session is split over invocations.
The report is per learner the mean +- std over seeds of the final exact accuracy, the final partial credit,
the best exact accuracy of the evaluated points, learner steps and generated tokens; last, search minus
its ablation on the mean final exact accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from azgym_bench.common import (
    checked_settings,
    collect,
    mean_std,
    prune_checkpoints,
    publish_runs,
    run_all,
    seeds_and_learners,
)
from azgym_bench.learning import REPO, azgym_points

LEARNERS = ("apo", "search", "simulations_1", "adaptive")
SEARCH, ABLATION = "search", "simulations_1"

logger = logging.getLogger("bench_countdown")


def learner_flags(name: str) -> list[str]:
    """``selfplay.py`` flags of a learner (beyond the data, budget and seed every run gets)."""
    if name == "apo":
        return ["--preset", "countdown"]
    simulations = "4" if name == SEARCH else "1"
    adaptive = ["--selfplay", "adaptive", "--dynamic-sampling"] if name == "adaptive" else []
    return [
        "--preset",
        "countdown",
        *own_learner_flags(),
        "--num-right",
        "2",
        "--num-wrong",
        "1",
        "--simulations",
        simulations,
        *adaptive,
    ]


def own_learner_flags() -> list[str]:
    """Flags that put the ``cpu`` preset's learner (azgym's own: GRPO, value head) in place of the countdown
    preset's A*PO, read from the two presets so they cannot drift apart."""
    from agents.alphazero.config import countdown_preset, cpu_preset

    own, apo = cpu_preset().learner, countdown_preset().learner
    flags = []
    for f in fields(own):
        value = getattr(own, f.name)
        if value == getattr(apo, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.extend([flag, "none" if value is None else str(value)])
    return flags


def eval_prompt() -> str:
    """The solve prompt's style at evaluation: the one every learner trains with (the countdown preset's)."""
    from agents.alphazero.config import countdown_preset

    return countdown_preset().env.prompt


class Trainer:
    """Trains and evaluates one (learner, seed) in ``run_dir``."""

    def __init__(self, args):
        self.args = args
        self._problems = None

    def __call__(self, name: str, seed: int, run_dir: Path) -> dict:
        args = self.args
        log = run_dir.with_suffix(".log")
        cmd = [sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(run_dir.parent),
               "--run-name", run_dir.name, *learner_flags(name), "--data", f"{args.level}:{args.train_size}",
               "--iterations", str(args.iterations), "--budget-min", str(args.budget_min), "--eval-every", "0",
               "--save-every", "1", "--seed", str(seed), "--no-progress", *args.selfplay_args.split()]  # fmt: skip
        start = time.perf_counter()
        with log.open("w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
        if code != 0:
            raise SystemExit(f"bench_countdown.py: {name} seed {seed} failed (exit code {code}); see {log}")
        wall = time.perf_counter() - start
        curve = []
        for point in azgym_points(run_dir, args):
            load = point.pop("load")  # before the point is copied into the result: a function is not JSON
            curve.append({**point, **self.evaluate(load)})
        prune_checkpoints(run_dir, keep={p["path"] for p in curve})
        return {
            "final": curve[-1]["accuracy"],
            "final_partial": curve[-1]["partial_credit"],
            "best": max(p["accuracy"] for p in curve),
            "learner_steps": curve[-1]["learner_steps"],
            "generated_tokens": curve[-1]["generated_tokens"],
            "wall_s": wall,
            "budget_min": args.budget_min,
            "curve": curve,
        }

    def evaluate(self, load) -> dict:
        from agents.alphazero.evaluate import evaluate
        from azgym.tasks import countdown

        if self._problems is None:
            self._problems = countdown.load_problems(self.args.level, "test")[: self.args.eval_size]
        result = evaluate(load().backend(), self._problems, countdown, max_tokens=self.args.max_tokens,
                          prompt=eval_prompt(), answer="strict", progress=False)  # fmt: skip
        credits = [countdown.partial_credit(r["response"], r["gold"]) for r in result["records"]]
        return {**{k: result[k] for k in ("accuracy", "accuracy_low", "accuracy_high", "format_accuracy",
                                          "tokens_per_problem")},
                "partial_credit": sum(credits) / len(credits)}  # fmt: skip


def report(out: Path, base: dict, settings: dict, commit: str) -> dict:
    return {
        "commit": commit,
        "task": f"countdown:{settings['level']}",
        "budget_min": settings["budget_min"],
        "eval": f"{settings['eval_size']} held-out problems, greedy, the {settings.get('prompt', 'task')} prompt, "
        "<answer> scored exactly and with partial credit; best = the highest exact accuracy of a run's evaluated "
        "points (optimistic)",
        "base": {"accuracy": base["accuracy"], "partial_credit": base["partial_credit"]},
        "learners": collect(
            out, LEARNERS, ("final", "final_partial", "best", "learner_steps", "generated_tokens", "wall_s")
        ),  # fmt: skip
    }


def print_report(summary: dict) -> None:
    base = summary["base"]
    print(f"{summary['task']}, {summary['budget_min']:g} min per learner and seed; {summary['eval']}")
    print(f"base model: exact {base['accuracy']:.3f}, partial credit {base['partial_credit']:.3f}")
    print(f"{'learner':14s} {'seeds':>5s} {'final exact':>15s} {'final partial':>15s} {'best exact':>15s} "
          f"{'steps':>6s} {'tokens':>8s}")  # fmt: skip
    for name, e in summary["learners"].items():
        final, partial, best = mean_std(e["final"]), mean_std(e["final_partial"]), mean_std(e["best"])
        print(f"{name:14s} {len(e['seeds']):5d} {final[0]:8.3f}+-{final[1]:.3f} {partial[0]:8.3f}+-{partial[1]:.3f} "
              f"{best[0]:8.3f}+-{best[1]:.3f} {mean_std(e['learner_steps'])[0]:6.0f} "
              f"{mean_std(e['generated_tokens'])[0]:8.0f}")  # fmt: skip
    learners = summary["learners"]
    if SEARCH in learners and ABLATION in learners:
        gap = mean_std(learners[SEARCH]["final"])[0] - mean_std(learners[ABLATION]["final"])[0]
        print(f"search minus no search (--simulations 1), mean final exact accuracy: {gap:+.3f}")


def base_result(out: Path, args) -> dict:
    path = out / "base.json"
    if not path.is_file():
        from agents.student import Student, StudentConfig

        path.write_text(json.dumps(Trainer(args).evaluate(lambda: Student.from_config(StudentConfig())), indent=1))
    return json.loads(path.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=25.0, help="wall-clock training minutes per run")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds, each run for every learner")
    parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma list of: {', '.join(LEARNERS)}")
    parser.add_argument("--level", default="3", help="countdown level: 3, 3big, 4, 4big")
    parser.add_argument("--train-size", type=int, default=2000, help="training problems of the level")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out problems evaluated")
    parser.add_argument("--eval-points", type=int, default=3, help="evaluations per run, spread over the budget")
    parser.add_argument("--iterations", type=int, default=30, help="iterations the temperature schedule spans "
                        "(the budget usually ends the run first)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=96, help="response tokens at evaluation")
    parser.add_argument("--out-dir", default="runs/bench-countdown", help="results, one folder per learner")
    parser.add_argument("--selfplay-args", default="", help="extra flags for scripts/selfplay.py")
    parser.add_argument("--report-only", action="store_true", help="print the report of the results on disk")
    parser.add_argument("--publish", action="store_true", help="write docs/bench_countdown.json and the results")
    args = parser.parse_args(argv)
    seeds, learners = seeds_and_learners(args, LEARNERS, "bench_countdown.py")
    if min(args.budget_min, args.eval_points, args.eval_size, args.iterations, args.train_size) <= 0:
        raise SystemExit("bench_countdown.py: error: --budget-min, --eval-points, --eval-size, --iterations and "
                         "--train-size must be positive")  # fmt: skip
    from azgym.tasks import DataError, countdown

    try:
        countdown.load_problems(f"{args.level}:1", "test")
    except DataError as err:
        raise SystemExit(f"bench_countdown.py: error: --level: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("budget_min", "level", "train_size", "eval_size", "eval_points",
                                              "iterations", "max_tokens", "selfplay_args")}  # fmt: skip
    settings["prompt"] = eval_prompt()
    settings = checked_settings(out, settings, args.report_only, "bench_countdown.py")
    if not args.report_only:
        base_result(out, args)
        run_all(out, learners, seeds, Trainer(args))
    if not (out / "base.json").is_file():
        raise SystemExit(f"bench_countdown.py: error: no results in {out} yet; run without --report-only first")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    summary = report(out, json.loads((out / "base.json").read_text()), settings, commit.stdout.strip())
    (out / "bench_countdown.json").write_text(json.dumps(summary, indent=1))
    if args.publish:  # the summary and every result file (copy them back into --out-dir to resume elsewhere)
        (REPO / "docs" / "bench_countdown.json").write_text(json.dumps(summary, indent=1))
        publish_runs(out, REPO / "docs" / "bench_countdown_runs")
    print_report(summary)
