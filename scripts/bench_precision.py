"""bfloat16 against float32 on the same weights: greedy answers on held-out problems and a learner step's loss.

    python scripts/bench_precision.py

The benchmark is :mod:`azgym_bench.precision` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.precision import main

if __name__ == "__main__":
    sys.exit(main())
