"""azgym's benchmarks: one importable harness (result files, seeds, resume, reports in :mod:`azgym_bench.common`)
and each benchmark as a module with a ``main``; ``scripts/bench_*.py`` and ``scripts/run_trl_anchor.py`` are their
entry points. Results and their commands are recorded in BENCHMARKS.md."""
