"""Benchmark the search: numba engine against the plain-Python reference, and the tree's share of a real search.

    python scripts/bench_mcts.py                 # synthetic tree, no language model
    python scripts/bench_mcts.py --real          # also: MCTS on SmolLM2 over GSM8K problems

Synthetic: branching 8, depth up to 12, priors / values / rewards from a hash of the path,
800 simulations per search. Simulations per second of the numba engine at B = 1, 16, 64 and of
the reference (agents/mcts/reference.py) at B = 64, in the same run, and of the Gumbel root at B = 64;
the last line is the ratio.

Real (--real): B GSM8K problems searched in lockstep with SmolLM2 as teacher and a value head on
it; reports the wall time spent outside the model (kernels and driver) as a share of the search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from agents.mcts import MCTS
from agents.mcts.synthetic import HashTreeModel

REPO = Path(__file__).resolve().parents[1]


def engine_rate(batch: int, sims: int, repeats: int, leaves: int = 1, root: str = "puct") -> float:
    model = HashTreeModel(num_actions=8, max_depth=12, seed=batch)
    search = MCTS(num_simulations=sims, leaves_per_round=leaves, root=root)
    search.search(model, model.roots(batch), np.random.default_rng(0))  # compile and warm up
    best = np.inf
    for r in range(repeats):
        start = time.perf_counter()
        search.search(model, model.roots(batch), np.random.default_rng(r))
        best = min(best, time.perf_counter() - start)
    return batch * sims / best


def reference_rate(batch: int, sims: int) -> float:
    from agents.mcts.reference import ReferenceSearch

    model = HashTreeModel(num_actions=8, max_depth=12, seed=batch)
    ref = ReferenceSearch(num_simulations=sims)
    start = time.perf_counter()
    ref.run(model, ref.new_roots(model, model.roots(batch), np.random.default_rng(0)))
    return batch * sims / (time.perf_counter() - start)


def real_search(batch: int, sims: int, data: str) -> None:
    from agents.mcts import MCTSAgent
    from agents.student.value import LMValueFunction
    from azgym.env import ReasoningEnv

    env = ReasoningEnv(data, split="test")
    agent = MCTSAgent(LMValueFunction(env.lm), num_simulations=sims, seed=0)
    states = []
    for i in range(batch):
        env.reset(seed=i, options={"problem_index": i})
        states.append(env.get_state())
    result = agent.search(env, states)
    stats = result.stats()
    seconds = result.seconds
    print(f"real search: B={batch}, {sims} simulations each, {seconds['total']:.1f} s total, "
          f"{seconds['model']:.1f} s in the model (teacher + value head)")  # fmt: skip
    print(f"  tree nodes {stats['num_nodes']:.1f}, depth {stats['max_depth']:.1f}, "
          f"{stats['simulations_per_s']:.2f} simulations/s")  # fmt: skip
    print(f"  tree code share of wall time: {100 * stats['tree_time_share']:.3f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="also time a search on SmolLM2")
    parser.add_argument("--real-batch", type=int, default=4)
    parser.add_argument("--real-simulations", type=int, default=8)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k"))
    args = parser.parse_args()

    rates = {}
    for batch in (1, 16, 64):
        rates[batch] = engine_rate(batch, args.simulations, args.repeats)
        print(f"numba engine   B={batch:3d}: {rates[batch]:12,.0f} simulations/s")
    multi = engine_rate(64, args.simulations, args.repeats, leaves=4)
    print(f"numba engine   B= 64, 4 leaves per round (virtual loss): {multi:12,.0f} simulations/s")
    gumbel = engine_rate(64, args.simulations, args.repeats, root="gumbel")
    print(f"numba engine   B= 64, Gumbel root (Sequential Halving, mctx's rule below): {gumbel:12,.0f} simulations/s")
    ref = reference_rate(64, args.simulations)
    print(f"python reference B= 64: {ref:12,.0f} simulations/s")
    if args.real:
        real_search(args.real_batch, args.real_simulations, args.data)
    print(f"ratio numba/reference at B=64: {rates[64] / ref:.1f}x")
