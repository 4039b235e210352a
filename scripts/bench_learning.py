"""Learning per CPU-minute, over seeds: the azgym loop against plain TRL GRPO + LoRA, same problems, same budget.

    pip install -e ".[bench]"          # trl and matplotlib
    python scripts/bench_learning.py --budget-min 10 --seeds 0,1,2 --out-dir runs/bench-learning
    python scripts/bench_learning.py --learners trl --seeds 0        # one piece of a long benchmark
    python scripts/bench_learning.py --report-only --publish         # table, docs/bench_learning.{json,png}

The benchmark is :mod:`azgym_bench.learning` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.learning import main

if __name__ == "__main__":
    sys.exit(main())
