"""Learning per CPU-minute: the azgym loop against plain TRL GRPO + LoRA, same problems, same budget.

    pip install -e ".[bench]"          # trl and matplotlib
    python scripts/bench_learning.py --budget-min 25 --out-dir runs/bench-learning

1. Builds train problems and 200 held-out problems from AZLLM-Arithmetic-v0 (``--level``, default
   ``add2``: 2-digit addition, where SmolLM2-135M is weakest without being at zero).
2. Runs ``../shared/anchors/trl_grpo_baseline.py`` (plain TRL GRPO + LoRA) on the train problems
   for ``--budget-min`` minutes.
3. Runs ``scripts/selfplay.py`` (the azgym loop) for the same wall-clock budget; with ``--ablation``
   also a ``--simulations 1`` run (no search, plain sampling from the priors).
4. Evaluates base, baseline and azgym with the project's own evaluator (same grader, greedy
   decoding, same prompt), writes ``results.json`` and ``curves.png``, and prints the gain ratio
   ``(azgym - base) / (baseline - base)`` last. The baseline's reward is "the last number is the
   answer", so azgym runs with ``--answer flexible`` (the same reward) and the ratio is taken on
   last-number accuracy; strict ('#### ') accuracy is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from azgym.prompts import PROMPT_STYLES, solve_messages, system_prompt

REPO = Path(__file__).resolve().parents[1]
ANCHOR = REPO.parent / "shared" / "anchors" / "trl_grpo_baseline.py"


def write_train_file(problems, path: Path, system_prompt: str | None) -> None:
    with path.open("w") as f:
        for p in problems:
            prompt = solve_messages(system_prompt, p.question)
            f.write(json.dumps({"prompt": prompt, "answer": p.gold}) + "\n")


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed with exit code {code}; see {log}")
    return time.perf_counter() - start


def evaluate_student(student, problems, task, max_tokens: int, prompt: str) -> dict:
    from agents.alphazero.evaluate import evaluate

    result = evaluate(student.backend(), problems, task, max_tokens=max_tokens, prompt=prompt)
    return {k: v for k, v in result.items() if k != "records"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=25.0, help="wall-clock minutes for each learner")
    parser.add_argument("--level", default="add2")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=48, help="response tokens at evaluation")
    parser.add_argument("--ablation", action="store_true", help="also run azgym with --simulations 1")
    parser.add_argument(
        "--prompt",
        default="bare",
        choices=PROMPT_STYLES,
        help="solve prompt for both learners and the evaluation: bare ('What is a + b?' alone, as "
        "the baseline was measured) or the task's system prompt",
    )
    parser.add_argument("--out-dir", default="runs/bench-learning")
    parser.add_argument("--selfplay-args", default="", help="extra flags for scripts/selfplay.py")
    args = parser.parse_args()

    import torch

    from agents.student import Student, StudentConfig
    from agents.training.checkpoint import latest_checkpoint, load_student
    from azgym.lm.registry import DEFAULT_MODEL, resolve_model
    from azgym.tasks import arithmetic

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train = arithmetic.load_problems(f"{args.level}:{args.train_size}", "train")
    held_out = arithmetic.load_problems(args.level, "test")[: args.eval_size]
    write_train_file(train, out / "train.jsonl", system_prompt("arithmetic", args.prompt))

    timings = {}
    baseline_dir = out / "baseline"
    timings["baseline"] = run([sys.executable, str(ANCHOR), "--model-dir", resolve_model(DEFAULT_MODEL), "--train",
                               str(out / "train.jsonl"), "--budget-min", str(args.budget_min), "--out-dir",
                               str(baseline_dir)], out / "baseline.log")  # fmt: skip
    runs = {"azgym": []}
    if args.ablation:
        runs["azgym_simulations_1"] = ["--simulations", "1"]
    for name, extra in runs.items():
        timings[name] = run([sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(out),
                             "--run-name", name, "--task", "arithmetic", "--data", f"{args.level}:{args.train_size}",
                             "--iterations", "100000", "--budget-min", str(args.budget_min), "--eval-size", "32",
                             "--eval-max-tokens", str(args.max_tokens), "--answer", "flexible", "--prompt", args.prompt,
                             "--no-progress",
                             *extra,
                             *args.selfplay_args.split()], out / f"{name}.log")  # fmt: skip

    results = {"level": args.level, "budget_min": args.budget_min, "prompt": args.prompt, "wall_s": timings}
    torch.manual_seed(0)
    results["base"] = evaluate_student(
        Student.from_config(StudentConfig()), held_out, arithmetic, args.max_tokens, args.prompt
    )
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    baseline = Student.from_config(StudentConfig())
    set_peft_model_state_dict(baseline.model, load_file(str(baseline_dir / "adapter_model.safetensors")))
    results["baseline"] = evaluate_student(baseline, held_out, arithmetic, args.max_tokens, args.prompt)
    for name in runs:
        results[name] = evaluate_student(load_student(latest_checkpoint(out / name / "checkpoints")), held_out,
                                         arithmetic, args.max_tokens, args.prompt)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(out, runs)

    base = results["base"]["flexible_accuracy"]
    print(f"level {args.level}, {len(held_out)} held-out problems, greedy, prompt {args.prompt}; "
          f"budget {args.budget_min} min each")  # fmt: skip
    for name in ("base", "baseline", *runs):
        r = results[name]
        print(f"  {name:22s} accuracy {r['accuracy']:.3f}  format {r['format_accuracy']:.3f}  "
              f"last-number {r['flexible_accuracy']:.3f}")  # fmt: skip
    gain = {name: results[name]["flexible_accuracy"] - base for name in ("baseline", *runs)}
    print("gains over the base model: " + ", ".join(f"{name} {g:+.3f}" for name, g in gain.items()))
    if gain["baseline"] > 0:
        print(f"gain ratio azgym/baseline (last-number accuracy): {gain['azgym'] / gain['baseline']:.2f}")
    else:  # a ratio against a baseline that did not improve means nothing
        print(f"gain ratio azgym/baseline (last-number accuracy): undefined, the baseline's gain is "
              f"{gain['baseline']:+.3f}")  # fmt: skip


def plot(out: Path, runs: dict) -> None:
    """Learning curves: azgym's eval accuracy per iteration and the baseline's training reward, by wall time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    stats = json.loads((out / "baseline" / "baseline_stats.json").read_text())
    per_step = stats["s_per_step"] / 60
    curve = stats["reward_curve"]
    ax.plot([s * per_step for s, _ in curve], [r for _, r in curve], label="TRL GRPO (train reward)")
    for name in runs:
        evals = sorted((out / name).glob("eval-*.json"), key=lambda p: p.stat().st_mtime)
        if evals:
            t0 = evals[0].stat().st_mtime
            xs = [(p.stat().st_mtime - t0) / 60 for p in evals]
            ys = [json.loads(p.read_text())["flexible_accuracy"] for p in evals]
            ax.plot(xs, ys, marker="o", label=f"{name} (held-out greedy accuracy)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("accuracy / reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)


if __name__ == "__main__":
    main()
