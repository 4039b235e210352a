"""One decode step: transformers' forward against the lean decoder, on the same bfloat16 inference copy.

    python scripts/bench_decode.py

The benchmark is :mod:`azgym_bench.decode` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.decode import main

if __name__ == "__main__":
    sys.exit(main())
