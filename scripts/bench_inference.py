"""Inference-time compute: greedy, maj@k and blind tree search on held-out problems, at matched generated tokens.

    python scripts/bench_inference.py                                  # 200 held-out add2 problems, the base model
    python scripts/bench_inference.py --checkpoint runs/demo --which best --budgets 64,128,256
    python scripts/bench_inference.py --search-root gumbel --budgets 64,128 --budget-simulations 4,8

The benchmark is :mod:`azgym_bench.inference` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.inference import main

if __name__ == "__main__":
    sys.exit(main())
