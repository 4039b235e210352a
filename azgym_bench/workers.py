"""Self-play throughput with Ray workers: in process (the baseline), then 1 and 2 workers, on the same episodes.

    python scripts/bench_workers.py --out docs/bench_workers.json    # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_workers.py --workers 1,2,4 --problems 16     # a bigger machine

One run, the same model, weights, problems and episode seeds in every mode (needs ``pip install -e ".[ray]"``):

1. in process: :meth:`agents.alphazero.player.Player.play`, what ``scripts/selfplay.py`` does without ``--workers``;
2. N workers, for each N of ``--workers``: a local Ray instance with N self-play actors
   (:class:`agents.alphazero.ray_selfplay.RaySelfPlay`, what ``--workers N`` does), the weights broadcast once.

Each mode first plays ``--warmup-problems`` other problems (numba, the first calls of a fresh process), then the
``--problems`` measured. Printed per mode: wall seconds, episodes/s, generated (candidate) tokens/s, the workers'
start-up seconds, and whether the episodes equal the in-process ones; last, the ratio of the largest worker
count's episodes/s to the smallest's. A worker gets ``cores / N`` CPU threads (Ray's share) while in process
torch uses every core, and the learner's process idles during self-play: on a 2-core machine the figures show
Ray's overhead (actor start-up, serialization, smaller batches per process), not a speed-up.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agents.alphazero.config import LoopConfig, RunConfig, cpu_preset
from agents.mcts import SearchConfig
from agents.student.model import StudentConfig
from azgym.cli import parse_config
from azgym.config import EnvConfig, check_fields, option, raise_problems

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchOptions:
    """The problems, the worker counts compared, and where the figures go."""

    problems: int = option(4, "problems measured (the first N of the train split)")
    group_size: int = option(2, "episodes per problem")
    warmup_problems: int = option(1, "other problems each mode plays first (not measured)")
    workers: tuple[str, ...] = option(("1", "2"), "worker counts measured after the in-process baseline")
    seed: int = option(0, "seeds the episodes and the student's value head")
    out: str = option("", "write the figures as JSON here too (e.g. docs/bench_workers.json)")

    def __post_init__(self):
        counts_ok = bool(self.workers) and all(w.isdigit() and int(w) >= 1 for w in self.workers)
        raise_problems(self, check_fields(self, {
            "problems": (self.problems >= 1, ">= 1"), "group_size": (self.group_size >= 1, ">= 1"),
            "warmup_problems": (self.warmup_problems >= 0, ">= 0"),
            "workers": (counts_ok, "a comma-separated list of counts >= 1"),
        }))  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """Self-play throughput in process and with 1 and 2 Ray workers, on the same episodes."""

    env: EnvConfig = field(default_factory=lambda: cpu_preset().env)
    search: SearchConfig = field(default_factory=lambda: cpu_preset().search)
    student: StudentConfig = field(default_factory=lambda: cpu_preset().student)
    bench: BenchOptions = field(default_factory=BenchOptions)


def name(workers: int) -> str:
    return f"{workers} worker" + ("s" if workers > 1 else "")


def played(episodes) -> list:
    return [(e.problem_id, e.response_ids, [s.action for s in e.steps]) for e in episodes]


def figures(episodes, stats, seconds: float, startup: float = 0.0) -> dict:
    return {"seconds": seconds, "episodes": len(episodes), "generated_tokens": stats.generated_tokens,
            "episodes_per_s": len(episodes) / seconds, "tokens_per_s": stats.generated_tokens / seconds,
            "startup_s": startup}  # fmt: skip


def measure(play, warmup, starts) -> tuple[list, dict]:
    """Play ``warmup`` (if any), then time ``starts``."""
    if warmup:
        play(warmup)
    start = time.perf_counter()
    episodes, stats, _ = play(starts)
    return episodes, figures(episodes, stats, time.perf_counter() - start)


def main(argv=None) -> dict:
    config = parse_config(BenchConfig, argv)
    bench = config.bench
    try:
        import ray
    except ImportError:
        raise SystemExit("bench_workers.py: error: needs Ray: pip install 'azgym[ray]'") from None

    from agents.alphazero.player import Player
    from agents.alphazero.ray_selfplay import RaySelfPlay

    run = RunConfig(
        env=config.env,
        search=config.search,
        student=config.student,
        loop=LoopConfig(selfplay="moves", group_size=bench.group_size, seed=bench.seed, progress=False),
    )
    player = Player.from_config(run)
    rng = np.random.default_rng(bench.seed)
    starts = player.starts(list(range(bench.problems)), rng)
    warmup = player.starts(list(range(bench.problems, bench.problems + bench.warmup_problems)), rng)
    modes = {}
    baseline, modes["in process"] = measure(lambda s: player.play(s, iteration=0, weights_version=0), warmup, starts)
    modes["in process"]["same_episodes"] = True
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        for count in sorted({int(w) for w in bench.workers}):
            start = time.perf_counter()
            pool = RaySelfPlay(run, player.student.config, workers=count)
            ray.get([actor.ready.remote() for actor in pool.actors])
            startup = time.perf_counter() - start
            pool.sync(0, player.student)
            episodes, modes[name(count)] = measure(
                lambda s, pool=pool: pool.play(s, player.group_size, player.env, iteration=0), warmup, starts
            )
            modes[name(count)].update(startup_s=startup, same_episodes=played(episodes) == played(baseline))
            pool.shutdown()
    finally:
        if started:
            ray.shutdown()
    counts = sorted(int(w) for w in bench.workers)
    high, base = name(counts[-1]), name(counts[0]) if len(counts) > 1 else "in process"
    ratio = modes[high]["episodes_per_s"] / modes[base]["episodes_per_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    result = {"commit": commit.stdout.strip(), "model": config.student.model, "device": config.student.device,
              "cores": os.cpu_count(), "task": f"{config.env.task}:{config.env.data or 'default'}",
              "problems": bench.problems, "group_size": bench.group_size,
              "simulations": config.search.num_simulations, "modes": modes, "ratio": ratio,
              "ratio_of": f"{high} / {base} episodes/s"}  # fmt: skip
    print(f"{config.student.model} on {config.student.device}, {os.cpu_count()} cores, {result['task']}; "
          f"{bench.problems} problems x {bench.group_size} episodes, {config.search.num_simulations} "
          "simulations")  # fmt: skip
    for mode, m in modes.items():
        print(f"  {mode:12s} {m['seconds']:7.1f} s  {m['episodes_per_s']:6.2f} episodes/s  {m['tokens_per_s']:7.1f} "
              f"generated tok/s  start-up {m['startup_s']:5.1f} s  same episodes as in process: "
              f"{'yes' if m['same_episodes'] else 'NO'}")  # fmt: skip
    if bench.out:
        Path(bench.out).parent.mkdir(parents=True, exist_ok=True)
        Path(bench.out).write_text(json.dumps({**result, "options": asdict(bench)}, indent=1))
    print(f"ratio {high} / {base} self-play episodes/s: {ratio:.2f}")
    return result
