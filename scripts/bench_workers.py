"""Self-play throughput with Ray workers: in process (the baseline), then 1 and 2 workers, on the same episodes.

    python scripts/bench_workers.py --out docs/bench_workers.json    # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_workers.py --workers 1,2,4 --problems 16     # a bigger machine

The benchmark is :mod:`azgym_bench.workers` (its docstring: what it measures and how); this file is its entry point.
"""

from azgym_bench.workers import main

if __name__ == "__main__":
    main()
