"""What the self-play agent chose, read from the replays a run left on disk (no model, no search).

    python scripts/replay_choices.py --out-dir runs/bench-learning azgym azgym_simulations_1

The analysis is :mod:`azgym_bench.replay_choices` (its docstring: what it counts); this file is its entry point.
"""

import sys

from azgym_bench.replay_choices import main

if __name__ == "__main__":
    sys.exit(main())
