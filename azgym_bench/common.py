"""What the learning benchmarks share: ``--seeds`` / ``--learners`` parsing, one result file per (learner, seed)
written once and never run again (so a benchmark longer than a session resumes), the settings a results folder
was made with, the per-learner collection of results, and publishing them under ``docs/``."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger("bench")


def parse_list(text: str, kind: Callable, what: str, script: str) -> list:
    """A comma list of ``kind``; a bad one ends ``script`` in one line naming the flag ``what``."""
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{script}: error: {what}: expected a comma list, got {text!r}") from None
    if not items:
        raise SystemExit(f"{script}: error: {what}: empty list")
    return items


def seeds_and_learners(args, known: Sequence[str], script: str) -> tuple[list[int], list[str]]:
    """``--seeds`` and ``--learners`` parsed, an unknown learner refused in one line."""
    seeds = parse_list(args.seeds, int, "--seeds", script)
    learners = parse_list(args.learners, str, "--learners", script)
    unknown = [n for n in learners if n not in known]
    if unknown:
        raise SystemExit(f"{script}: error: --learners: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return seeds, learners


def pending(out: Path, learners: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The (learner, seed) pairs whose result is not on disk yet, in the order they will run."""
    return [(name, seed) for name in learners for seed in seeds if not result_path(out, name, seed).is_file()]


def result_path(out: Path, learner: str, seed: int) -> Path:
    return out / learner / f"seed-{seed}.json"


def run_all(out: Path, learners, seeds, train_one: Callable[[str, int, Path], dict]) -> list[tuple[str, int]]:
    """Run every pending (learner, seed) with ``train_one(learner, seed, run_dir) -> result`` and write each
    result as soon as it exists (via a temporary file, so a cut-off write is not taken for a result)."""
    todo = pending(out, learners, seeds)
    done = [(n, s) for n in learners for s in seeds if (n, s) not in todo]
    for name, seed in done:
        logger.info("%s seed %d: result on disk, not run again (%s)", name, seed, result_path(out, name, seed))
    for name, seed in todo:
        run_dir = out / name / f"seed-{seed}"
        if run_dir.exists():
            logger.info("%s seed %d: %s has no result (cut off): starting it afresh", name, seed, run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        result = dict(train_one(name, seed, run_dir), learner=name, seed=seed)
        path = result_path(out, name, seed)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.rename(path)
        logger.info("%s seed %d: final %.3f, best %.3f -> %s", name, seed, result["final"], result["best"], path)
    return todo


def prune_checkpoints(run_dir: Path, keep: set[str]) -> None:
    """Delete the checkpoints that were not evaluated (each is ~0.1 GB)."""
    for path in (run_dir / "checkpoints").glob("step-*"):
        if str(path) not in keep:
            shutil.rmtree(path)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value).

    >>> mean_std([0.2, 0.4, 0.6])
    (0.4, 0.2)
    """
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return round(mean, 12), round(math.sqrt(var), 12)


RESULT_KEYS = ("final", "best", "learner_steps", "generated_tokens", "wall_s")


def collect(
    out: Path, names: Sequence[str], keys: Sequence[str] = RESULT_KEYS, optional: Sequence[str] = ()
) -> dict[str, dict]:
    """Every result on disk, per learner: seeds and the per-seed lists of the JSON report; each ``optional`` key is
    listed (None for a seed without it) where some seed has it."""
    learners = {}
    for name in names:
        results = sorted((json.loads(p.read_text()) for p in (out / name).glob("seed-*.json")), key=lambda r: r["seed"])
        if results:
            learners[name] = {"seeds": [r["seed"] for r in results], **{key: [r[key] for r in results] for key in keys}}
            learners[name]["curves"] = [r["curve"] for r in results]
            for key in optional:
                if any(key in r for r in results):
                    learners[name][key] = [r.get(key) for r in results]
    return learners


def checked_settings(out: Path, settings: dict, report_only: bool, script: str) -> dict:
    """The settings the results in ``out`` were made with: saved on the first run, then the same ones required
    (with ``report_only``, whatever made them)."""
    saved = out / "settings.json"
    if saved.is_file() and report_only:
        return json.loads(saved.read_text())
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"{script}: error: {out} holds results made with other settings ({saved}); use the same "
                         "flags or another --out-dir")  # fmt: skip
    saved.write_text(json.dumps(settings, indent=1))
    return settings


def publish_runs(out: Path, runs: Path) -> None:
    """Copy the settings, the base result and every (learner, seed) result under ``runs`` (copied back into an
    ``--out-dir``, the benchmark resumes from them)."""
    for path in [out / "settings.json", out / "base.json", *out.glob("*/seed-*.json")]:
        (runs / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, runs / path.relative_to(out))


def rescue_summary(path: Path, last_iteration: int | None = None) -> dict | None:
    """An adaptive run's rescue statistics over its iterations up to ``last_iteration`` (that of the final
    evaluated checkpoint; None: all): shares over all groups, the share of all-fail groups rescued, totals of the
    rescue's cost. None for a run that wrote no ``adaptive.jsonl``."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if last_iteration is None or r["iteration"] <= last_iteration]
    groups = sum(r["groups"] for r in rows)
    if not groups:
        return None
    share = {
        key: sum(r[key] * r["groups"] for r in rows) / groups
        for key in ("all_fail_before", "all_pass_before", "all_fail_after", "dead_after")
    }
    all_fail = sum(r["all_fail_before"] * r["groups"] for r in rows)
    rescued = sum(r["rescued_by_cache"] + r["rescued_by_search"] for r in rows)
    searched = sum(r["searched_problems"] for r in rows)
    return {
        "iterations": len(rows),
        "groups": groups,
        **share,
        "rescued_share": rescued / all_fail if all_fail else None,
        "rescued_by_search": sum(r["rescued_by_search"] for r in rows),
        "rescued_by_cache": sum(r["rescued_by_cache"] for r in rows),
        "search_rescue_rate": sum(r["rescued_by_search"] for r in rows) / searched if searched else None,
        **{key: sum(r[key] for r in rows) for key in ("rescue_seconds", "rescue_tokens", "rescue_simulations")},
    }


def print_rescue(learners: dict) -> None:
    """The adaptive learners' rescue statistics, mean over seeds."""
    rows = {name: [r for r in e.get("adaptive", []) if r] for name, e in learners.items()}
    rows = {name: runs for name, runs in rows.items() if runs}
    if not rows:
        return
    print(
        f"{'rescue (adaptive)':22s} {'all-fail':>8s} {'all-pass':>8s} {'rescued':>8s} {'all-fail':>9s} "
        f"{'dead':>6s} {'seconds':>8s} {'tokens':>8s} {'sims':>6s}"
    )
    print(f"{'':22s} {'before':>8s} {'before':>8s} {'share':>8s} {'after':>9s} {'after':>6s}")
    for name, runs in rows.items():

        def mean(key, runs=runs):
            values = [r[key] for r in runs if r.get(key) is not None]
            return sum(values) / len(values) if values else float("nan")

        print(
            f"{name:22s} {mean('all_fail_before'):8.3f} {mean('all_pass_before'):8.3f} {mean('rescued_share'):8.3f} "
            f"{mean('all_fail_after'):9.3f} {mean('dead_after'):6.3f} {mean('rescue_seconds'):8.0f} "
            f"{mean('rescue_tokens'):8.0f} {mean('rescue_simulations'):6.0f}"
        )
