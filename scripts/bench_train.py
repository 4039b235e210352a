"""Benchmark a GRPO learner step against a plain forward + backward of the same model and batch.

    python scripts/bench_train.py

The benchmark is :mod:`azgym_bench.train` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.train import main

if __name__ == "__main__":
    sys.exit(main())
