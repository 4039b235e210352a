"""A run's checkpoint as a plain transformers directory (LoRA merged) that model servers load.

    python scripts/export.py runs/selfplay runs/export                 # the run's newest checkpoint
    python scripts/export.py runs/selfplay runs/export --which best    # its best by held-out accuracy
    transformers serve runs/export --port 8000                         # a CPU (pip install -e '.[verifiers]')
    vllm serve runs/export --port 8000                                 # a GPU
    python scripts/selfplay.py --teachers "http://localhost:8000/v1#runs/export,smollm2-135m-instruct"

The directory holds config.json, model.safetensors, generation_config.json and the tokenizer with its chat
template; the value head is written beside them (value_head.safetensors), and azgym_export.json says which
checkpoint it came from.
"""

from __future__ import annotations

import argparse
import logging
import sys

from agents.training.checkpoint import CHECKPOINT_CHOICES, CheckpointError
from agents.training.export import DTYPES, export_merged
from azgym.cli import run_script


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a step-N or best directory, a checkpoints folder or a run directory")
    parser.add_argument("out", help="the directory to write (must not exist unless --force)")
    parser.add_argument(
        "--which", default="newest", choices=CHECKPOINT_CHOICES, help="a run's newest or best checkpoint"
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="the merged weights' dtype")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_merged(args.checkpoint, args.out, which=args.which, dtype=args.dtype, overwrite=args.force)
    except (CheckpointError, FileExistsError) as err:
        parser.exit(2, f"export.py: error: {err}\n")
    print(f"exported {args.checkpoint} ({args.which}) to {out}")


if __name__ == "__main__":
    sys.exit(run_script("export.py", main))
