"""What the learning benchmarks share: ``--seeds`` / ``--learners`` parsing, one result file per (learner, seed)
written once and never run again (so a benchmark longer than a session resumes), the settings a results folder
was made with, the per-learner collection of results, and publishing them under ``docs/``.

The benchmark is :mod:`azgym_bench.common` (its docstring: what it measures and how); this file is its entry point.
"""

import sys

from azgym_bench.common import main

if __name__ == "__main__":
    sys.exit(main())
