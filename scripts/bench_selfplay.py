"""Self-play throughput: generated tokens/s during MCTS self-play against plain batched ``generate``.

    python scripts/bench_selfplay.py                       # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_selfplay.py --task gsm8k --data ../shared/data/gsm8k --device cuda

The benchmark is :mod:`azgym_bench.selfplay` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.selfplay import main

if __name__ == "__main__":
    sys.exit(main())
