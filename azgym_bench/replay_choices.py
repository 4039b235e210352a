"""What the self-play agent chose, read from the replays a run left on disk (no model, no search).

    python scripts/replay_choices.py --out-dir runs/bench-learning azgym azgym_simulations_1

Per learner (``<out-dir>/<learner>/seed-*/replay/*.jsonl``, the last ``--capacity-iterations`` of each
seed's run): episodes, the share solved, moves per episode, the share cut off by the length limit, the
share of moves that played a "wrong"-prompt candidate beside the priors' mass on those candidates,
the share that played the priors' most likely candidate, the normalised entropies of the move
policy (visits; 0 without search) and of the priors, and the share of groups (one problem's episodes
in one shard) whose returns are all equal: GRPO's group advantages are zero there, so the group teaches
the policy nothing. A search that helps plays wrong candidates less often than the priors would.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def entropy(weights) -> float:
    """Entropy of ``weights`` normalised, over log of their count (0 for one candidate)."""
    p = np.asarray(weights, np.float64)
    if len(p) < 2 or p.sum() <= 0:
        return 0.0
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(weights)))


def choices(run_dirs: list[Path]) -> dict:
    """The statistics above over every replay shard under ``run_dirs``."""
    shards = [f for d in run_dirs for f in sorted((d / "replay").glob("*.jsonl"))]
    keyed = [(f, json.loads(line)) for f in shards for line in f.read_text().splitlines() if line.strip()]
    episodes = [e for _, e in keyed]
    if not episodes:
        return {"episodes": 0}
    moves = [s for e in episodes for s in e["steps"]]
    groups: dict[tuple, list[float]] = {}
    for f, e in keyed:
        groups.setdefault((f, e.get("problem_id")), []).append(float(e.get("episode_return", e["solved"])))
    return {
        "episodes": len(episodes),
        "solved": float(np.mean([e["solved"] for e in episodes])),
        "moves_per_episode": len(moves) / len(episodes),
        "truncated": float(np.mean([e["truncated"] for e in episodes])),
        "played_wrong": float(np.mean([s["labels"][s["action"]] == "wrong" for s in moves])),
        "prior_on_wrong": float(
            np.mean([sum(p for p, lab in zip(s["priors"], s["labels"], strict=True) if lab == "wrong") for s in moves])
        ),  # fmt: skip
        "played_prior_argmax": float(np.mean([s["action"] == int(np.argmax(s["priors"])) for s in moves])),
        "visit_entropy": float(np.mean([entropy(s["visits"]) for s in moves])),
        "prior_entropy": float(np.mean([entropy(s["priors"]) for s in moves])),
        "equal_groups": float(np.mean([len(set(r)) == 1 for r in groups.values()])),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("learners", nargs="+", help="learner folders under --out-dir (each holds seed-* runs)")
    parser.add_argument("--out-dir", default="runs/bench-learning", help="the benchmark's results folder")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    missing = [name for name in args.learners if not (out / name).is_dir()]
    if missing:
        parser.error(f"no results folder for {', '.join(missing)} under {out}: run the benchmark first")
    header = ("learner", "episodes", "solved", "moves/ep", "truncated", "played wrong", "prior on wrong",
              "played argmax prior", "H(visits)", "H(priors)", "groups with equal returns")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    for name in args.learners:
        c = choices(sorted(p for p in (out / name).glob("seed-*") if p.is_dir()))
        if not c["episodes"]:
            print(f"| {name} | 0 (no replay on disk) |" + " |" * (len(header) - 2))
            continue
        keys = ("solved", "moves_per_episode", "truncated", "played_wrong", "prior_on_wrong", "played_prior_argmax",
                "visit_entropy", "prior_entropy", "equal_groups")  # fmt: skip
        print(f"| {name} | {c['episodes']} | " + " | ".join(f"{c[k]:.3f}" if k != "moves_per_episode"
                                                           else f"{c[k]:.2f}" for k in keys) + " |")  # fmt: skip
