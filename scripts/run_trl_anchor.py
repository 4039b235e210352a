"""Run the TRL anchor script with another learning rate, adapter snapshots and a count of generated tokens.

    python scripts/run_trl_anchor.py --lr 5e-5 --snapshot-min 3.3 -- --model-dir DIR --train train.jsonl \\
        --budget-min 10 --out-dir OUT --seed 0

The run is :mod:`azgym_bench.trl_anchor` (its docstring: what it does and how); this file is its entry point.
"""

import sys

from azgym_bench.trl_anchor import main

if __name__ == "__main__":
    sys.exit(main())
