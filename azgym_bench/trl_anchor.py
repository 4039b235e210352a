"""Run the TRL anchor script with another learning rate, adapter snapshots and a count of generated tokens.

    python scripts/run_trl_anchor.py --lr 5e-5 --snapshot-min 3.3 -- --model-dir DIR --train train.jsonl \
        --budget-min 10 --out-dir OUT --seed 0

``../shared/anchors/trl_grpo_baseline.py`` runs unchanged (its arguments after ``--``) except that
its ``GRPOConfig`` gets ``--lr`` (and ``bf16=True`` with ``--bf16``: the trainer's autocast, float32
master weights, as this project's learner runs on a CPU with bfloat16 products) and its ``GRPOTrainer`` one
more callback: the LoRA adapter is saved
to ``OUT/snapshots/step-N/`` every ``--snapshot-min`` minutes, with ``point.json`` (minutes since
start, steps, completion tokens generated so far); ``OUT/final_point.json`` holds the same at the end.
``scripts/bench_learning.py`` evaluates them all with the project's evaluator.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "trl_grpo_baseline.py"


def main(argv: list[str] | None = None) -> None:
    """Run the TRL anchor script unchanged except for its learning rate, saving adapter snapshots every
    ``--snapshot-min`` minutes and counting the completion tokens it generates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--snapshot-min", type=float, required=True)
    parser.add_argument("--bf16", action="store_true", help="train in bfloat16 mixed precision (GRPOConfig bf16)")
    ours, anchor_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    anchor_args = [a for a in anchor_args if a != "--"]
    out_dir = Path(anchor_args[anchor_args.index("--out-dir") + 1])
    import trl
    from transformers import TrainerCallback

    start = time.time()
    counts, seen = {"generated_tokens": 0}, {}

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.next = ours.snapshot_min * 60

        def on_train_begin(self, args, state, control, **_):
            seen["learning_rate"] = args.learning_rate  # what the trainer runs with, recorded as proof
            seen["bf16"] = bool(args.bf16)

        def on_step_end(self, args, state, control, model=None, **_):
            if time.time() - start >= self.next:
                self.next += ours.snapshot_min * 60
                path = out_dir / "snapshots" / f"step-{state.global_step}"
                model.save_pretrained(path)
                point = {"minutes": (time.time() - start) / 60, "learner_steps": state.global_step, **counts}
                (path / "point.json").write_text(json.dumps(point))

    class Config(trl.GRPOConfig):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "learning_rate": ours.lr, **({"bf16": True} if ours.bf16 else {})})

    class Trainer(trl.GRPOTrainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Snapshots()], **kwargs)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            counts["generated_tokens"] += int(output["completion_mask"].sum())
            return output

    trl.GRPOConfig, trl.GRPOTrainer = Config, Trainer
    sys.argv = [str(ANCHOR), *anchor_args]
    runpy.run_path(str(ANCHOR), run_name="__main__")
    stats = json.loads((out_dir / "baseline_stats.json").read_text())
    final = {"minutes": (time.time() - start) / 60, "learner_steps": stats["steps"], **counts, **seen}
    (out_dir / "final_point.json").write_text(json.dumps(final))
