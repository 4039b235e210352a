"""Evaluation on held-out problems: greedy, sampled majority vote, value-reranked best-of-N, blind tree search.

Every mode writes full responses from the task's solve prompt and grades them with the task's
grader, and only the final responses: no mode sees a gold answer before that (the tree search values
its finished leaves without it, see :mod:`agents.alphazero.tree_eval`). Metrics: accuracy, format
accuracy (an answer marker present), the split of correct / wrong answer / format failure, and
generated tokens per problem (greedy: the response; maj@k and best-of-N: all k samples; tree: every
candidate the search's teachers sampled, plus the greedy finish past a token budget).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from azgym.lm.hf import HFBackend
from azgym.prompts import solve_prompt_ids, system_prompt
from azgym.tasks.base import Problem

MODES = ("greedy", "majority", "best_of_n", "tree", "mcts")  # mcts: the former name of tree, kept as an alias
ANSWERS = ("strict", "flexible")
# the summary's numbers, in the order they are printed and logged (see :func:`summarize`)
METRICS = (
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "strict_accuracy",
    "flexible_accuracy",
    "format_accuracy",
    "correct",
    "wrong_answer",
    "format_failure",
    "tokens_per_problem",
)


def evaluate(
    lm: HFBackend,
    problems: Sequence[Problem],
    task,
    *,
    mode: str = "greedy",
    k: int = 4,
    max_tokens: int = 256,
    temperature: float = 0.7,
    batch_size: int = 32,
    value_fn=None,
    env=None,
    agent=None,
    seed: int = 0,
    progress: bool = True,
    prompt: str = "task",
    answer: str = "strict",
) -> dict:
    """Grade ``lm`` on ``problems``; returns metrics and one record per problem.

    ``majority`` samples ``k`` responses and votes on the parsed answers; ``best_of_n`` samples ``k``
    and keeps the one ``value_fn(prompt_ids_list) -> values`` rates highest; ``tree`` (alias ``mcts``)
    plays ``env`` (built on the same problems) with ``agent``, a :class:`~agents.alphazero.tree_eval.BlindSearch`,
    ``batch_size`` problems in lockstep. ``prompt`` picks the solve prompt's system message:
    ``"task"`` (the task's), ``"bare"`` (the question alone) or the message text. ``answer`` is what
    counts as the answer for ``accuracy``: ``"strict"`` (after the '#### ' marker) or ``"flexible"``
    (the last number, the reward of ``--answer flexible``); both accuracies are always reported.
    """
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer rule {answer!r}; choose one of {', '.join(ANSWERS)}")
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "best_of_n" and value_fn is None:
        raise ValueError("best_of_n needs a value_fn to rerank the samples")
    mode = "tree" if mode == "mcts" else mode
    if mode == "tree" and (env is None or not hasattr(agent, "responses")):
        raise ValueError("tree evaluation needs env (built on these problems) and agent (a tree_eval.BlindSearch)")
    system = system_prompt(task.NAME, prompt)
    records = []
    bar = tqdm(
        total=len(problems), desc=f"eval {mode}", unit="problem", disable=not progress or mode == "tree", leave=False
    )
    if mode == "tree":
        index = {p.id: i for i, p in enumerate(env.problems)}
        missing = [p.id for p in problems if p.id not in index]
        if missing:
            raise ValueError(f"the env does not hold problem {missing[0]!r}: build it on the evaluated problems")
        played = agent.responses(
            env, lm, [index[p.id] for p in problems], seed=seed, batch_size=batch_size, progress=progress
        )
        records = [_record(p, text, tokens, task, answer) for p, (text, tokens) in zip(problems, played, strict=True)]
    else:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            prompts = [solve_prompt_ids(lm, system, p.question) for p in chunk]
            if mode == "greedy":
                outs = lm.generate(prompts, max_tokens=max_tokens, temperature=0.0)
                records.extend(
                    _record(p, o[0].text, len(o[0].token_ids), task, answer) for p, o in zip(chunk, outs, strict=True)
                )
            else:
                seeds = [seed * 100_003 + start + i for i in range(len(chunk))]
                outs = lm.generate(prompts, n=k, max_tokens=max_tokens, temperature=temperature, seed=seeds)
                for p, prompt, samples in zip(chunk, prompts, outs, strict=True):
                    if mode == "majority":
                        chosen = _majority(samples, task, strict=answer == "strict")
                    else:
                        values = value_fn([prompt + list(s.token_ids) for s in samples])
                        chosen = samples[int(np.argmax(values))]
                    tokens = sum(len(s.token_ids) for s in samples)
                    records.append(_record(p, chosen.text, tokens, task, answer))
            bar.update(len(chunk))
    bar.close()
    return {"mode": mode, "num_problems": len(records), **summarize(records), "records": records}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96): honest at 0 and 1 and small n.

    >>> [round(x, 3) for x in wilson_interval(0, 32)]
    [0.0, 0.107]
    >>> [round(x, 3) for x in wilson_interval(100, 200)]
    [0.431, 0.569]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(records: list[dict]) -> dict[str, float]:
    """Accuracy (under the records' answer rule) with its 95% Wilson interval, the strict and last-number
    accuracies, format accuracy (a '#### ' marker), the split correct / wrong answer / no answer, tokens."""
    n = max(len(records), 1)
    correct = sum(r["correct"] for r in records)
    answered = sum(r["parsed"] is not None for r in records)
    low, high = wilson_interval(correct, len(records))
    return {
        "accuracy": correct / n,
        "accuracy_low": low,  # 95% Wilson interval of the accuracy
        "accuracy_high": high,
        "strict_accuracy": sum(r["strict_correct"] for r in records) / n,  # the answer after '#### '
        "flexible_accuracy": sum(r["flexible_correct"] for r in records) / n,  # the last number
        "format_accuracy": sum(r["format_ok"] for r in records) / n,
        "correct": correct / n,
        "wrong_answer": (answered - correct) / n,
        "format_failure": (len(records) - answered) / n,  # no answer found under the rule
        "tokens_per_problem": sum(r["tokens"] for r in records) / n,
    }


def before_after_table(rows: dict[str, dict]) -> str:
    """A plain-text table of evaluation results, one row per name (e.g. base, after), for a run's last words.

    >>> r = {"accuracy": 0.5, "accuracy_low": 0.43, "accuracy_high": 0.57, "format_accuracy": 0.0,
    ...      "tokens_per_problem": 21.04}
    >>> print(before_after_table({"after": r}))
                    accuracy (95% CI)    format    tokens/problem
    after           0.500 (0.430-0.570)   0.000              21.0
    """
    lines = [f"{'':15s} {'accuracy (95% CI)':20s} {'format':>6s}    tokens/problem"]
    for name, r in rows.items():
        interval = f"{r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f})"
        lines.append(f"{name:15s} {interval:20s} {r['format_accuracy']:6.3f} {r['tokens_per_problem']:17.1f}")
    return "\n".join(lines)


def _record(problem: Problem, text: str, tokens: int, task, answer: str = "strict") -> dict:
    g = task.grade(text, problem.gold)
    strict = answer == "strict"
    return {
        "problem_id": problem.id,
        "gold": problem.gold,
        "answer_rule": answer,
        "parsed": g.parsed if strict else g.flexible_parsed,
        "correct": g.correct if strict else g.flexible_correct,
        "strict_correct": g.correct,
        "flexible_correct": g.flexible_correct,
        "format_ok": g.format_ok,
        "tokens": tokens,
        "response": text,
    }


def _majority(samples, task, strict: bool = True):
    answers = [task.extract_answer(s.text, strict=strict) for s in samples]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return samples[0]
    winner = votes.most_common(1)[0][0]
    return samples[answers.index(winner)]
