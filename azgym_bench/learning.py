"""Learning per CPU-minute, over seeds: the azgym loop against plain TRL GRPO + LoRA, same problems, same budget.

    pip install -e ".[bench]"          # trl and matplotlib
    python scripts/bench_learning.py --budget-min 10 --seeds 0,1,2 --out-dir runs/bench-learning
    python scripts/bench_learning.py --learners trl --seeds 0        # one piece of a long benchmark
    python scripts/bench_learning.py --report-only --publish         # table, docs/bench_learning.{json,png}

Every learner trains on the same 2,000 ``--level`` problems (AZLLM-Arithmetic-v0, default ``add2``)
for ``--budget-min`` wall-clock minutes per seed, then the project's evaluator grades it on the same
200 held-out problems (greedy, the bare question as the prompt, the last number as the answer: the
anchor's reward) at ``--eval-points`` times spread over the budget. Learners (``--learners``):

- ``trl``: ``../shared/anchors/trl_grpo_baseline.py`` as documented (lr 2e-4), with its ``--seed``;
- ``trl_azgym_lr``: the same script at azgym's learning rate (its config patched, nothing else);
- ``trl_bf16``: ``trl_azgym_lr`` in bfloat16 mixed precision (``GRPOConfig(bf16=True)``), as azgym's learner
  runs on a CPU with bfloat16 products, so that a gain is the method's and not the precision's;
- ``azgym``: ``scripts/selfplay.py`` with its defaults (the cpu preset: MCTS per move, 4
  simulations, the played path trained) and ``--seed``;
- ``azgym_tree``: tree self-play (``--selfplay tree --simulations 8 --leaves-per-round 2``: one
  search tree per problem, every node rolled out, every response trained with TreeRL advantages);
- ``azgym_tree_entropy``: the same tree branching only where the priors are unsure (``--branch-entropy
  0.85``, about the median normalised entropy of the priors in earlier runs; elsewhere one step);
- ``azgym_simulations_1``: the same loop with ``--simulations 1`` (no search; the ablation);
- ``azgym_solve`` / ``azgym_solve_simulations_1``: both with ``--right-prompt solve`` (the right
  candidates are the student's own samples under the solve prompt, as TRL samples, not the
  "continue correctly" prompt's);
- ``azgym_rollout``: the default with Monte Carlo leaves (``--leaf-value rollout``: the student rolls
  each leaf the search reaches out to a graded end instead of asking the value head);
- ``azgym_gumbel``: the default with the Gumbel MuZero root (``--search-root gumbel``: the move is the
  Sequential Halving winner over prior logits + sigma(completed Q), not a draw from the visit counts).
- ``azgym_adaptive``: adaptive self-play (``--selfplay adaptive --dynamic-sampling``: cheap groups from the
  priors, the MCTS only on all-fail groups, a solution cache, all-pass problems skipped for a while, learner
  steps only on groups whose returns differ); its rescue statistics (all-fail and all-pass shares before and
  after, the share rescued, the tokens, seconds and simulations the rescue took) are read from the run's
  ``adaptive.jsonl`` into the result and the report;
- ``azgym_adaptive_no_search``: the same with ``--rescue-budget 0`` (no rescue search; the cache, the skip list
  and dynamic sampling stay): what the search adds to the adaptive loop.

Each (learner, seed) writes ``<out-dir>/<learner>/seed-<s>.json`` when it has finished and been
evaluated; a result on disk is never run again, so an interrupted benchmark resumes where it stopped
and a long one can be split over several invocations. A run directory without its result (the run was
cut off) is started afresh: a time budget cannot be resumed. Every invocation ends with the report over all
results on disk: per learner the mean +- std over seeds of the final and best accuracy, a collapse flag (final
< half of best), learner steps, generated tokens and the accuracy at equal generated tokens (each run's curve
read at the fewest tokens any run generated: :func:`accuracy_at_tokens`); the baseline is the better TRL
learner by mean final accuracy; the gain ratio ``(azgym - base) / (baseline - base)`` on means is printed
last (and ``azgym_adaptive``'s after it). ``--publish`` also writes ``docs/bench_learning.json``,
``docs/bench_learning_curves.png`` and every result file under ``docs/bench_learning_runs/`` (another ``--level``
L: ``docs/bench_learning_L.json``, ``..._L_curves.png``, ``..._L_runs/``): on a fresh machine, ``cp -r
docs/bench_learning_runs runs/bench-learning`` and the benchmark resumes from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from azgym_bench.common import (
    checked_settings,
    collect,
    mean_std,
    print_rescue,
    prune_checkpoints,
    publish_runs,
    rescue_summary,
    run_all,
    seeds_and_learners,
)
from azgym_bench.trl_anchor import ANCHOR

REPO = Path(__file__).resolve().parents[1]
ANCHOR_LR = 2e-4  # the anchor's documented learning rate
LEARNERS = (
    "trl",
    "trl_azgym_lr",
    "trl_bf16",
    "azgym",
    "azgym_tree",
    "azgym_tree_entropy",
    "azgym_simulations_1",
    "azgym_solve",
    "azgym_solve_simulations_1",
    "azgym_rollout",
    "azgym_gumbel",
    "azgym_adaptive",
    "azgym_adaptive_no_search",
)
MOVES = ["--selfplay", "moves"]  # move-by-move self-play, selfplay.py's default before the search issue
EXTRA_FLAGS = {  # what each azgym learner adds to selfplay.py's defaults
    "azgym": MOVES,
    "azgym_tree": ["--selfplay", "tree", "--simulations", "8", "--leaves-per-round", "2"],
    "azgym_tree_entropy": [
        "--selfplay",
        "tree",
        "--simulations",
        "8",
        "--leaves-per-round",
        "2",
        "--branch-entropy",
        "0.85",
    ],  # the median of the priors' normalised entropy  # fmt: skip
    "azgym_simulations_1": [*MOVES, "--simulations", "1"],
    "azgym_solve": [*MOVES, "--right-prompt", "solve"],
    "azgym_solve_simulations_1": [*MOVES, "--right-prompt", "solve", "--simulations", "1"],
    "azgym_rollout": [*MOVES, "--leaf-value", "rollout"],
    "azgym_gumbel": [*MOVES, "--search-root", "gumbel"],
    "azgym_adaptive": ["--selfplay", "adaptive", "--dynamic-sampling"],
    "azgym_adaptive_no_search": ["--selfplay", "adaptive", "--dynamic-sampling", "--rescue-budget", "0"],
}
DEFAULT, ABLATION, BASELINES = "azgym", "azgym_simulations_1", ("trl", "trl_azgym_lr", "trl_bf16")
ADAPTIVE = "azgym_adaptive"  # its gain ratio is printed last (the search issue's judge)

logger = logging.getLogger("bench_learning")


# ---------------------------------------------------------------- training one (learner, seed)


class Trainer:
    """Trains and evaluates one (learner, seed) in ``run_dir``; holds what all runs share."""

    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.train_file = out / "train.jsonl"
        self._problems = None

    def __call__(self, name: str, seed: int, run_dir: Path) -> dict:
        args = self.args
        log = run_dir.with_suffix(".log")  # beside the run: selfplay.py wants an empty run directory
        start = time.perf_counter()
        if name.startswith("trl"):
            lr = ANCHOR_LR if name == "trl" else azgym_learning_rate()  # trl_bf16: trl_azgym_lr in bfloat16
            cmd = [sys.executable, str(REPO / "scripts" / "run_trl_anchor.py"), "--lr", str(lr),
                   *(["--bf16"] if name == "trl_bf16" else []),
                   "--snapshot-min", str(args.budget_min / args.eval_points), "--",
                   "--model-dir", model_dir(), "--train", str(self.train_file), "--budget-min", str(args.budget_min),
                   "--out-dir", str(run_dir), "--seed", str(seed)]  # fmt: skip
        else:
            extra = EXTRA_FLAGS[name]
            cmd = [sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(run_dir.parent),
                   "--run-name", run_dir.name, "--task", "arithmetic", "--data", f"{args.level}:{args.train_size}",
                   "--iterations", "100000", "--budget-min", str(args.budget_min), "--eval-every", "0",
                   "--save-every", "1", "--seed", str(seed), "--no-progress", *extra,
                   *args.selfplay_args.split()]  # fmt: skip
        with log.open("w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
        if code != 0:
            raise SystemExit(f"bench_learning.py: {name} seed {seed} failed (exit code {code}); see {log}")
        wall = time.perf_counter() - start
        points = trl_points(run_dir) if name.startswith("trl") else azgym_points(run_dir, args)
        curve = []
        for point in points:
            result = self.evaluate(point.pop("load"))
            curve.append({**point, **result})
        if not name.startswith("trl"):
            prune_checkpoints(run_dir, keep={p["path"] for p in curve})
        final, best = curve[-1]["accuracy"], max(p["accuracy"] for p in curve)
        rescue = rescue_summary(run_dir / "adaptive.jsonl", curve[-1].get("iteration"))
        return {
            **({"adaptive": rescue} if rescue else {}),
            "final": final,
            "best": best,
            "learner_steps": curve[-1]["learner_steps"],
            "generated_tokens": curve[-1]["generated_tokens"],
            "wall_s": wall,
            "budget_min": args.budget_min,
            "curve": curve,
        }

    def evaluate(self, load: Callable) -> dict:
        from agents.alphazero.evaluate import evaluate
        from azgym.tasks import arithmetic

        if self._problems is None:
            self._problems = arithmetic.load_problems(self.args.level, "test")[: self.args.eval_size]
        student = load()
        result = evaluate(student.backend(), self._problems, arithmetic, max_tokens=self.args.max_tokens,
                          prompt="bare", answer="flexible", progress=False)  # fmt: skip
        return {k: result[k] for k in ("accuracy", "accuracy_low", "accuracy_high", "format_accuracy",
                                       "tokens_per_problem")}  # fmt: skip


def azgym_learning_rate() -> float:
    from agents.alphazero.config import cpu_preset

    return cpu_preset().learner.learning_rate


def model_dir() -> str:
    from azgym.lm.registry import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


def azgym_points(run_dir: Path, args) -> list[dict]:
    """The checkpoints nearest each evaluation time; the final one is the last within the budget (an iteration
    can end well past it, while the anchor stops within one ~12 s step), so azgym never gets more time."""
    import torch

    from agents.training.checkpoint import load_student

    found = []
    for path in sorted((run_dir / "checkpoints").glob("step-*")):
        extra = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)["extra"]
        meta = json.loads((path / "meta.json").read_text())
        found.append(
            {
                "path": str(path),
                "minutes": extra["elapsed_s"] / 60,
                "learner_steps": meta["step"],
                "generated_tokens": extra["generated_tokens"],
                "iteration": extra["iteration"],
            }
        )
    if not found:
        raise SystemExit(f"bench_learning.py: no checkpoint under {run_dir}; see {run_dir}/train.log")
    within = [p for p in found if p["minutes"] <= args.budget_min * 1.02] or found[:1]
    final, chosen = within[-1], []
    for i in range(1, args.eval_points):
        target = args.budget_min * i / args.eval_points
        near = min(within[:-1] or within, key=lambda p: abs(p["minutes"] - target))
        if near not in chosen:
            chosen.append(near)
    if final not in chosen:
        chosen.append(final)
    return [dict(p, load=lambda path=p["path"]: load_student(path)) for p in chosen]


def trl_points(run_dir: Path) -> list[dict]:
    """The anchor's snapshots (written by ``scripts/run_trl_anchor.py``) and its final adapter."""
    snapshots = sorted((run_dir / "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    points = [json.loads((p / "point.json").read_text()) | {"path": str(p)} for p in snapshots]
    final = json.loads((run_dir / "final_point.json").read_text()) | {"path": str(run_dir)}
    points = [p for p in points if p["learner_steps"] < final["learner_steps"]] + [final]
    return [dict(p, load=lambda path=p["path"]: load_adapter(path)) for p in points]


def load_adapter(path: str):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from agents.student import Student, StudentConfig

    student = Student.from_config(StudentConfig())
    loaded = set_peft_model_state_dict(student.model, load_file(str(Path(path) / "adapter_model.safetensors")))
    if loaded.unexpected_keys:
        raise SystemExit(f"bench_learning.py: the adapter in {path} does not fit the student (unexpected keys "
                         f"{loaded.unexpected_keys[:3]}); the anchor's LoRA settings changed?")  # fmt: skip
    return student


# ---------------------------------------------------------------- the report


def accuracy_at_tokens(curve: list[dict], tokens: float, base: float) -> float | None:
    """A run's held-out accuracy after ``tokens`` generated tokens: linear between its evaluated points, from the
    base model's accuracy at 0 tokens; None where the run never reached ``tokens`` or its points lack token counts."""
    points = [(p["generated_tokens"], p["accuracy"]) for p in curve if "generated_tokens" in p]
    if not points or points[-1][0] < tokens:
        return None
    xs, ys = zip(*[(0, base), *points], strict=True)
    return float(np.interp(tokens, xs, ys))


def report(out: Path, base: dict, budget_min: float, commit: str, eval_size: int = 200) -> dict:
    learners = collect(out, LEARNERS, optional=("adaptive",))
    for entry in learners.values():
        entry["minutes"] = [curve[-1]["minutes"] for curve in entry["curves"]]  # of training, to the last point
        entry["collapsed"] = [f < b / 2 for f, b in zip(entry["final"], entry["best"], strict=True)]
    # accuracy at equal generated tokens: the fewest any run generated in its budget, on every run's curve
    reached = [c[-1]["generated_tokens"] for e in learners.values() for c in e["curves"] if "generated_tokens" in c[-1]]
    matched = min(reached) if reached else None
    for entry in learners.values():
        curves = entry["curves"]
        entry["at_matched_tokens"] = ([accuracy_at_tokens(c, matched, base["accuracy"]) for c in curves]
                                      if matched is not None else [None] * len(curves))  # fmt: skip
    trl = [n for n in BASELINES if n in learners]
    baseline = max(trl, key=lambda n: mean_std(learners[n]["final"])[0]) if trl else None
    return {
        "commit": commit,
        "task": base["level"],
        "budget_min": budget_min,
        "eval": f"{eval_size} held-out problems, greedy, bare prompt, last number as the answer; best = the "
        "highest of a run's evaluated points (on the same problems, so optimistic)",
        "base": base["accuracy"],
        "default": DEFAULT,
        "ablation": ABLATION,
        "baseline": baseline,
        "matched_tokens": matched,
        "learners": learners,
    }


def print_report(summary: dict) -> None:
    base = summary["base"]
    print(f"{summary['task']}, {summary['budget_min']:g} min per learner and seed; {summary['eval']}")
    print(f"base model: {base:.3f}")
    matched = summary["matched_tokens"]
    at = f"@{matched} tok" if matched is not None else "@tokens"
    print(f"{'learner':22s} {'seeds':>5s} {'final':>15s} {'best':>15s} {'collapsed':>9s} {'minutes':>7s} "
          f"{'steps':>7s} {'tokens':>9s} {at:>15s}")  # fmt: skip
    for name, e in summary["learners"].items():
        final, best = mean_std(e["final"]), mean_std(e["best"])
        steps, tokens = mean_std(e["learner_steps"])[0], mean_std(e["generated_tokens"])[0]
        reached = [a for a in e["at_matched_tokens"] if a is not None]
        at_tokens = "{:8.3f}+-{:.3f}".format(*mean_std(reached)) if reached else f"{'-':>15s}"
        print(f"{name:22s} {len(e['seeds']):5d} {final[0]:8.3f}+-{final[1]:.3f} {best[0]:8.3f}+-{best[1]:.3f} "
              f"{sum(e['collapsed']):4d}/{len(e['seeds']):<4d} {mean_std(e['minutes'])[0]:7.1f} {steps:7.0f} "
              f"{tokens:9.0f} {at_tokens}")  # fmt: skip
    baseline, learners = summary["baseline"], summary["learners"]
    print_rescue(learners)
    judged = [name for name in (DEFAULT, ADAPTIVE) if name in learners]
    if judged and baseline:
        base_gain = mean_std(learners[baseline]["final"])[0] - base
        for name in judged:  # the adaptive loop's last: the search issue's judge
            gain = mean_std(learners[name]["final"])[0] - base
            ratio = (
                f"{gain / base_gain:.2f}" if base_gain > 0 else f"undefined (the baseline's gain is {base_gain:+.3f})"
            )
            if ABLATION in learners:
                search = mean_std(learners[name]["final"])[0] - mean_std(learners[ABLATION]["final"])[0]
                print(f"{name} minus no search ({ABLATION}), mean final accuracy: {search:+.3f}")
            print(f"gain ratio {name}/{baseline} on mean final accuracy (over the base {base:.3f}): {ratio}")
    else:
        print(f"gain ratio: not yet (needs {DEFAULT} or {ADAPTIVE} and a TRL learner on disk)")


def plot(summary: dict, path: Path) -> None:
    """Every seed's held-out accuracy against minutes, one colour per learner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # noqa: N806
    for colour, (name, entry) in zip(COLOURS, summary["learners"].items(), strict=False):
        for i, (seed, curve) in enumerate(zip(entry["seeds"], entry["curves"], strict=True)):
            xs = [0.0] + [p["minutes"] for p in curve]
            ys = [summary["base"]] + [p["accuracy"] for p in curve]
            ax.plot(xs, ys, marker="o", color=colour, alpha=0.8, label=name if i == 0 else None)
            ax.annotate(str(seed), (xs[-1], ys[-1]), fontsize=7, color=colour)
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"{summary['task']}: every seed of every learner (base at 0 min)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def base_accuracy(out: Path, args) -> dict:
    """The base model on the held-out problems, computed once per output folder."""
    path = out / "base.json"
    if path.is_file():
        return json.loads(path.read_text())
    from agents.student import Student, StudentConfig

    trainer = Trainer(args, out)
    result = dict(trainer.evaluate(lambda: Student.from_config(StudentConfig())), level=args.level)
    path.write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=10.0, help="wall-clock training minutes per run")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds, each run for every learner")
    parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma list of: {', '.join(LEARNERS)}")
    parser.add_argument("--level", default="add2", help="arithmetic level of the problems")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--eval-points", type=int, default=3, help="evaluations per run, spread over the budget")
    parser.add_argument("--max-tokens", type=int, default=64, help="response tokens at evaluation")
    parser.add_argument("--out-dir", default="runs/bench-learning")
    parser.add_argument("--selfplay-args", default="", help="extra flags for scripts/selfplay.py")
    parser.add_argument("--report-only", action="store_true", help="print the report of the results on disk")
    parser.add_argument("--publish", action="store_true", help="write docs/bench_learning.json and its PNG")
    args = parser.parse_args(argv)
    seeds, learners = seeds_and_learners(args, LEARNERS, "bench_learning.py")
    if args.budget_min <= 0 or args.eval_points < 1 or args.eval_size < 1:
        raise SystemExit("bench_learning.py: error: --budget-min, --eval-points and --eval-size must be positive")
    if any(n.startswith("trl") for n in learners) and not ANCHOR.is_file() and not args.report_only:
        raise SystemExit(f"bench_learning.py: error: the TRL anchor {ANCHOR} is missing; run without trl learners")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("budget_min", "level", "train_size", "eval_size", "eval_points",
                                              "max_tokens", "selfplay_args")}  # fmt: skip
    settings = checked_settings(out, settings, args.report_only, "bench_learning.py")
    if not args.report_only:
        write_train_file(out / "train.jsonl", args.level, args.train_size)
        base_accuracy(out, args)
        run_all(out, learners, seeds, Trainer(args, out))
    if not (out / "base.json").is_file():
        raise SystemExit(f"bench_learning.py: error: no results in {out} yet; run without --report-only first")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    summary = report(out, base_accuracy(out, args), settings["budget_min"], commit.stdout.strip(),
                     settings["eval_size"])  # fmt: skip
    (out / "bench_learning.json").write_text(json.dumps(summary, indent=1))
    if summary["learners"]:
        plot(summary, out / "bench_learning_curves.png")
    if args.publish:  # the summary, its plot, and every result file (copy them back into --out-dir to resume)
        stem = "bench_learning" if args.level == "add2" else f"bench_learning_{args.level}"
        (REPO / "docs" / f"{stem}.json").write_text(json.dumps(summary, indent=1))
        shutil.copy(out / "bench_learning_curves.png", REPO / "docs" / f"{stem}_curves.png")
        publish_runs(out, REPO / "docs" / f"{stem}_runs")
    print_report(summary)


def write_train_file(path: Path, level: str, size: int) -> None:
    from azgym.prompts import solve_messages, system_prompt
    from azgym.tasks import arithmetic

    if path.is_file():
        return
    with path.open("w") as f:
        for p in arithmetic.load_problems(f"{level}:{size}", "train"):
            prompt = solve_messages(system_prompt("arithmetic", "bare"), p.question)
            f.write(json.dumps({"prompt": prompt, "answer": p.gold}) + "\n")
