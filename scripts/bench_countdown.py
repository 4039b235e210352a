"""Countdown learning over seeds: A*PO, azgym's search loop and its no-search ablation, same problems, same budget.

    python scripts/bench_countdown.py --budget-min 25 --seeds 0,1,2                 # everything (~4 h on 2 cores)
    python scripts/bench_countdown.py --budget-min 25 --seeds 0 --learners apo      # one piece of it
    python scripts/bench_countdown.py --report-only --publish                        # table, docs/bench_countdown.json

The benchmark is :mod:`azgym_bench.countdown` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.countdown import main

if __name__ == "__main__":
    sys.exit(main())
