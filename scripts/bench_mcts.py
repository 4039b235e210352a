"""Benchmark the search: numba engine against the plain-Python reference, and the tree's share of a real search.

    python scripts/bench_mcts.py                 # synthetic tree, no language model
    python scripts/bench_mcts.py --real          # also: MCTS on SmolLM2 over GSM8K problems

The benchmark is :mod:`azgym_bench.mcts` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.mcts import main

if __name__ == "__main__":
    sys.exit(main())
