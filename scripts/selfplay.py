"""The AlphaZero loop: self-play with MCTS -> on-disk replay -> GRPO + value training -> evaluation -> checkpoint.

    python scripts/selfplay.py                                   # CPU preset: 2-digit addition, minutes
    python scripts/selfplay.py --task gsm8k --data ../shared/data/gsm8k --iterations 3
    python scripts/selfplay.py --preset gpu --data openai/gsm8k  # one GPU
    python scripts/selfplay.py --run-name demo --resume          # continue a stopped run
    python scripts/selfplay.py --help                            # every setting, its meaning and default
    torchrun --nproc_per_node 2 scripts/selfplay.py ...          # data-parallel over 2 processes
    tensorboard --logdir runs

Every flag is a field of :class:`agents.alphazero.config.RunConfig` (env / search / student /
learner / loop sections); ``--preset`` picks the starting values. The seed system's environment
variables override a preset's value when its flag is not given: ``NUM_MCTS_ITERATIONS``
(``--simulations``), ``MAX_TREE_DEPTH`` (``--max-steps``), ``MAX_TOKENS`` (``--max-tokens``).
The settings that ran are written to ``runs/<run-name>/config.json``. Ctrl-C stops cleanly and
leaves a resumable run. Under ``torchrun`` every process plays its share of the problems and
learns each step together with the others (:mod:`agents.distributed.ddp`); rank 0 logs, writes and
reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from agents.alphazero.config import ALIASES, PRESETS, RunConfig
from agents.alphazero.evaluate import before_after_table
from agents.alphazero.run import Run, RunExistsError
from agents.distributed.ddp import SetupError, shutdown
from azgym.cli import parse_config, run_script

logger = logging.getLogger("selfplay")


def main(argv=None) -> int:
    config = parse_config(RunConfig, argv, presets=PRESETS, default_preset="cpu", aliases=ALIASES)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun the others log warnings only
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        run = Run(config)
    except (RunExistsError, SetupError) as err:
        shutdown()
        sys.exit(f"selfplay.py: error: {err}" if main_process else 1)
    started = time.perf_counter()
    try:
        final = run.run()
    except KeyboardInterrupt:
        run.close()
        logger.warning("interrupted; finished iterations are saved. Continue with: python scripts/selfplay.py "
                       "--run-name %s --resume", config.loop.run_name)  # fmt: skip
        return 130
    finally:
        run.group.close()
    if run.is_main:
        report(run, final, time.perf_counter() - started)
    return 0


def report(run: Run, final: dict | None, seconds: float) -> None:
    """The run's last words: held-out accuracy before and after (with 95% intervals), and where to look."""
    config, base_file = run.config, run.dir / "eval-base.json"
    base = run.base_result or (json.loads(base_file.read_text()) if base_file.is_file() else None)
    rows = {name: r for name, r in (("base", base), (f"after {run.learner.step_count} steps", final)) if r}
    answer = "the last number" if config.env.answer == "flexible" else "after '#### '"
    print(f"\nrun {run.dir} finished in {seconds / 60:.1f} min")
    if rows:
        n = next(iter(rows.values()))["num_problems"]
        print(f"held-out: {n} {config.env.task} test problems, greedy, answer = {answer}")
        print(before_after_table(rows))
    if (run.checkpoints / "best").is_dir():
        print(f"best checkpoint: {run.checkpoints / 'best'} (held-out accuracy {run.best_accuracy:.3f})")
    print(f"TensorBoard: tensorboard --logdir {config.loop.runs_dir}")


if __name__ == "__main__":
    sys.exit(run_script("selfplay.py", main))
