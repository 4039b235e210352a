"""Evaluate a student (base or trained) on held-out problems and compare.

    python scripts/evaluate.py --task arithmetic --data add2 --size 200
    python scripts/evaluate.py --checkpoint runs/selfplay/checkpoints/step-000008 --compare-base
    python scripts/evaluate.py --adapter OUT_DIR          # a peft LoRA adapter (e.g. the TRL baseline's)

Modes: greedy (default), majority (maj@k of sampled responses), best_of_n (k samples reranked by
the value head), mcts (MCTS episodes with --simulations). Writes a JSON result with every response
and prints a summary table; with --compare-base the base model is evaluated too, side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from agents.checkpoint import load_student
from agents.evaluate import MODES, evaluate
from agents.student import Student, StudentConfig
from agents.value import LMValueFunction
from azgym.env import TASKS
from azgym.models import DEFAULT_MODEL

METRICS = (
    "accuracy",
    "format_accuracy",
    "flexible_accuracy",
    "correct",
    "wrong_answer",
    "format_failure",
    "tokens_per_problem",
)


def build(args, trained: bool) -> Student:
    if trained and args.checkpoint:
        return load_student(args.checkpoint, device=args.device)
    student = Student.from_config(StudentConfig(model=args.model, device=args.device))
    if trained and args.adapter:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = Path(args.adapter) / "adapter_model.safetensors"
        if not weights.is_file():
            raise SystemExit(f"{weights} not found: --adapter takes a directory saved by peft's save_pretrained")
        set_peft_model_state_dict(student.model, load_file(str(weights)))
    return student


def run(args, student: Student, task, problems) -> dict:
    student.eval()
    lm = student.backend()
    kwargs = {}
    if args.mode == "best_of_n":
        value = LMValueFunction(lm, student.value_head)
        kwargs["value_fn"] = lambda prompts: value.values_of(prompts)
    if args.mode == "mcts":
        from agents.mcts import MCTSAgent
        from azgym.env import ReasoningEnv

        kwargs["env"] = ReasoningEnv(
            list(problems), model=lm, task=args.task, max_tokens=args.max_tokens, prompt=args.prompt
        )
        kwargs["agent"] = MCTSAgent(LMValueFunction(lm, student.value_head), num_simulations=args.simulations,
                                    temperature=0.0, dirichlet_fraction=0.0, seed=args.seed)  # fmt: skip
    with torch.no_grad():
        return evaluate(lm, problems, task, mode=args.mode, k=args.k, max_tokens=args.max_tokens, seed=args.seed,
                        prompt=args.prompt, **kwargs)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic", choices=sorted(TASKS))
    parser.add_argument("--data", default="", help="task data (default: the task's own)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--size", type=int, default=200, help="held-out problems (the first N)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--checkpoint", default="", help="a step-N directory written by selfplay.py")
    parser.add_argument("--adapter", default="", help="a peft LoRA adapter directory on --model")
    parser.add_argument("--compare-base", action="store_true", help="evaluate the base model too")
    parser.add_argument("--mode", default="greedy", choices=MODES)
    parser.add_argument("--k", type=int, default=4, help="samples for majority / best_of_n")
    parser.add_argument("--simulations", type=int, default=8, help="MCTS simulations per move (mode mcts)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompt", default="task", help="solve prompt's system message: task | bare | the text")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON result path (default: eval-<mode>.json here)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    task = TASKS[args.task]
    problems = task.load_problems(args.data or task.HUB_ID, args.split)[: args.size]
    results = {}
    if args.compare_base or not (args.checkpoint or args.adapter):
        results["base"] = run(args, build(args, trained=False), task, problems)
    if args.checkpoint or args.adapter:
        results["trained"] = run(args, build(args, trained=True), task, problems)
    out = Path(args.out or f"eval-{args.mode}.json")
    out.write_text(json.dumps(results, indent=1))
    names = list(results)
    print(f"{args.task} {args.split}, {len(problems)} problems, mode {args.mode}")
    print(f"{'metric':20s}" + "".join(f"{n:>12s}" for n in names))
    for metric in METRICS:
        print(f"{metric:20s}" + "".join(f"{results[n][metric]:12.3f}" for n in names))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
