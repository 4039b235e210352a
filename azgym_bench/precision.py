"""bfloat16 against float32 on the same weights: greedy answers on held-out problems and a learner step's loss.

    python scripts/bench_precision.py                     # add2 (the default run's task), 200 held-out problems
    python scripts/bench_precision.py --task gsm8k --data ../shared/data/gsm8k --max-tokens 256 --prompt task \\
        --answer strict

1. Greedy evaluation (the project's evaluator) of the student's backend in float32 and on its bfloat16 copy:
   accuracy of each with its interval, the share of problems whose response text is identical, the share graded
   alike, and each pass's seconds.
2. One learner step on a fixed batch (the model's own samples of the first problems, 4 per problem, rewards
   alternating within each group) by two students built alike, one per precision: the loss, the policy and value
   terms, the gradient norm, and the largest and mean difference of the completion tokens' log-probs.

``--out FILE`` writes the figures as JSON (``docs/bench_precision.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.alphazero.evaluate import evaluate
from agents.student import Student, StudentConfig
from agents.training.learner import Learner, LearnerConfig
from agents.training.samples import Sample
from azgym.prompts import solve_prompt_ids, system_prompt
from azgym.tasks import get_task, load_problems

COMPARED = ("float32", "bfloat16")  # the two precisions set side by side


def greedy_pair(student: Student, problems, task, args) -> dict:
    """The evaluator's greedy pass in each precision on the same weights, and how far the two agree."""
    results = {}
    for precision in COMPARED:
        lm = student.backend(precision=precision)
        start = time.perf_counter()
        result = evaluate(lm, problems, task, max_tokens=args.max_tokens, prompt=args.prompt, answer=args.answer,
                          progress=False)  # fmt: skip
        results[precision] = {**result, "seconds": time.perf_counter() - start}
    low, high = (results[p]["records"] for p in COMPARED)
    same_text = np.mean([a["response"] == b["response"] for a, b in zip(low, high, strict=True)])
    same_grade = np.mean([a["correct"] == b["correct"] for a, b in zip(low, high, strict=True)])
    keys = ("accuracy", "accuracy_low", "accuracy_high", "seconds")
    return {
        **{p: {k: float(results[p][k]) for k in keys} for p in COMPARED},
        "same_response": float(same_text),
        "same_grade": float(same_grade),
        "problems": len(problems),
    }


def fixed_batch(student: Student, problems, task, args) -> list[Sample]:
    """4 samples (temperature 1, seeded) of each of the first ``args.batch_problems`` problems, in float32."""
    lm = student.backend(precision="float32")
    system = system_prompt(task.NAME, args.prompt)
    chosen = problems[: args.batch_problems]
    prompts = [solve_prompt_ids(lm, system, p.question) for p in chosen]
    outs = lm.generate(prompts, n=4, max_tokens=args.max_tokens, seed=list(range(len(prompts))))
    return [
        Sample(tuple(prompt), g.token_ids or (lm.eos_token_id,), float(j % 2), f"p{i}",
               value_positions=(0, len(g.token_ids)), value_targets=(0.0, 1.0 if j % 2 else -1.0))
        for i, (prompt, group) in enumerate(zip(prompts, outs, strict=True)) for j, g in enumerate(group)
    ]  # fmt: skip


def learner_pair(model: str, samples: list[Sample]) -> dict:
    """One learner step on ``samples`` per precision (students built alike), and their log-probs' difference."""
    out, logprobs = {}, {}
    for precision in COMPARED:
        torch.manual_seed(0)
        student = Student.from_config(StudentConfig(model=model, precision=precision))
        with torch.no_grad():
            fwd, _, _ = student.forward_batch([(s.prompt_ids, s.completion_ids) for s in samples])
        logprobs[precision] = fwd.logprobs[fwd.mask.bool()]
        metrics = Learner(student, LearnerConfig()).step(samples)
        out[precision] = {k: float(metrics[k]) for k in ("loss", "policy", "value_loss", "grad_norm") if k in metrics}
    delta = (logprobs["bfloat16"] - logprobs["float32"]).abs()
    out["logprob_abs_diff_max"] = float(delta.max())
    out["logprob_abs_diff_mean"] = float(delta.mean())
    out["loss_rel_diff"] = abs(out["bfloat16"]["loss"] - out["float32"]["loss"]) / max(
        abs(out["float32"]["loss"]), 1e-9
    )
    out["grad_norm_rel_diff"] = abs(out["bfloat16"]["grad_norm"] - out["float32"]["grad_norm"]) / max(
        out["float32"]["grad_norm"], 1e-9
    )
    out["samples"] = len(samples)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the student's model")
    parser.add_argument("--task", default="arithmetic", help="task of the held-out problems")
    parser.add_argument("--data", default="add2", help="the task's data (arithmetic: its level)")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out problems graded greedily")
    parser.add_argument("--max-tokens", type=int, default=32, help="response tokens")
    parser.add_argument("--prompt", default="bare", help="solve prompt's system message: task, bare or text")
    parser.add_argument(
        "--answer", default="flexible", choices=("strict", "flexible"), help="what counts as the answer"
    )
    parser.add_argument("--batch-problems", type=int, default=4, help="problems of the learner's fixed batch (x4)")
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    problems = load_problems(args.task, args.data, "test")[: args.eval_size]
    torch.manual_seed(0)
    student = Student.from_config(StudentConfig(model=args.model, precision="float32"))
    greedy = greedy_pair(student, problems, task, args)
    learner = learner_pair(args.model, fixed_batch(student, problems, task, args))
    print(f"{args.model}, {args.task}:{args.data}, {greedy['problems']} held-out problems, greedy, {args.max_tokens} "
          f"tokens")  # fmt: skip
    for p in COMPARED:
        g = greedy[p]
        print(f"  {p:9s} accuracy {g['accuracy']:.3f} ({g['accuracy_low']:.3f}-{g['accuracy_high']:.3f})  "
              f"{g['seconds']:6.1f} s")  # fmt: skip
    print(f"  identical responses {greedy['same_response']:.1%}, graded alike {greedy['same_grade']:.1%}")
    print(f"learner step on a fixed batch of {learner['samples']} samples:")
    for p in COMPARED:
        print(f"  {p:9s} " + "  ".join(f"{k} {v:.5f}" for k, v in learner[p].items()))
    print(f"  completion log-probs |bf16 - fp32|: max {learner['logprob_abs_diff_max']:.4f}, mean "
          f"{learner['logprob_abs_diff_mean']:.4f}; relative difference: loss {learner['loss_rel_diff']:.2%}, gradient "
          f"norm {learner['grad_norm_rel_diff']:.2%}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"greedy": greedy, "learner": learner, "args": vars(args)}, indent=1))
