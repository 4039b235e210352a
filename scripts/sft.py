"""Supervised fine-tuning of the student on GSM8K reference solutions: the warm start before self-play.

    python scripts/sft.py --data ../shared/data/gsm8k --budget-min 30          # CPU: 30 minutes, LoRA
    python scripts/sft.py --data ../shared/data/gsm8k --params runs/sft-hpo/best_params.json --budget-min 30
    python scripts/sft.py --run-name sft --resume                               # continue a stopped run
    python scripts/sft.py --preset gpu --data openai/gsm8k --epochs 2           # one GPU
    python scripts/sft.py --help                                                # every setting

Trains on the train split's reference solutions (``... #### <n>``) through the solve prompt the env and
the evaluator use (``--prompt``, default ``task``: pass the same ``--prompt`` to selfplay.py and
evaluate.py), loss on the response tokens only, linear warm-up and decay, held-out loss (and, with
``--generate-size``, greedy format and accuracy) on the last ``--heldout-size`` train problems every
``--eval-every`` steps. Writes ``<runs-dir>/<run-name>/checkpoints/{best,step-N}`` in the project's
checkpoint format: ``selfplay.py --init-from DIR`` and ``evaluate.py --checkpoint DIR`` load them.
Ctrl-C (or the time budget) leaves a resumable run. See agents/warmstart/sft.py for the trainer.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field, replace

import torch

from agents.student import StudentConfig
from agents.training.checkpoint import CheckpointError, build_student
from agents.warmstart.data import build_examples, split_heldout
from agents.warmstart.params import ParamsError, apply_params, read_params
from agents.warmstart.sft import SFTConfig, SFTResult, run_dir, train_sft
from azgym.cli import parse_config, run_script, to_dict
from azgym.prompts import system_prompt
from azgym.tasks import DataError, load_problems


@dataclass(frozen=True)
class SFTRunConfig:
    """Supervised fine-tuning of the student on GSM8K reference solutions (the warm start before self-play)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)


def cpu_preset() -> SFTRunConfig:
    """A 2-core CPU: LoRA r 32, batches of 8 (micro-batches of 4), held-out loss on 64 problems every 20 steps."""
    return SFTRunConfig()


def gpu_preset() -> SFTRunConfig:
    """One GPU: batches of 32, held-out loss on 200 problems and greedy answers to 64 of them every 50 steps."""
    cpu = cpu_preset()
    return SFTRunConfig(
        student=replace(cpu.student, device="cuda"),
        sft=replace(cpu.sft, batch_size=32, micro_batch_size=16, heldout_size=200, eval_every=50, generate_size=64),
    )


PRESETS = {"cpu": cpu_preset, "gpu": gpu_preset}


def parse(argv: list[str]) -> SFTRunConfig:
    """The config: preset < ``--params`` file < flags; a bad params file ends the script with one line."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--params", default="", help="a best_params.json from hpo.py (read before the flags)")
    early.add_argument("--preset", default="cpu", help="starting values of every setting (cpu or gpu)")
    known = early.parse_known_args(argv)[0]
    params = {}
    if known.params:
        try:
            params = read_params(known.params)
            apply_params(PRESETS.get(known.preset, cpu_preset)(), params, source=known.params)
        except ParamsError as err:
            sys.exit(f"sft.py: error: --params: {err}")
    presets = {name: (lambda make=make: apply_params(make(), params, known.params)) for name, make in PRESETS.items()}
    return parse_config(SFTRunConfig, argv, presets=presets, default_preset="cpu")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse(argv)
    again = "python scripts/sft.py " + shlex.join([a for a in argv if a != "--resume"] + ["--resume"])
    options = config.sft
    directory = run_dir(options)
    if directory.is_dir() and any(directory.iterdir()) and not options.resume:
        sys.exit(f"sft.py: error: {directory} already holds a run; pass --resume to continue it or --run-name NAME "
                 "for a new one")  # fmt: skip
    if options.resume:
        check_resume(config)
    try:
        problems = load_problems("gsm8k", options.data, "train")
        train_problems, heldout_problems = split_heldout(problems, options.heldout_size, options.train_size)
    except DataError as err:
        sys.exit(f"sft.py: error: --data {options.data or 'openai/gsm8k'}: {err}")
    if options.generate_size > len(heldout_problems):
        sys.exit(f"sft.py: error: --generate-size {options.generate_size} > --heldout-size {options.heldout_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(options.seed)
    try:
        student = build_student(config.student)
    except CheckpointError as err:
        sys.exit(f"sft.py: error: --init-from: {err}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    lm = student.backend()
    system = system_prompt("gsm8k", options.prompt)
    kwargs = dict(system=system, eos_token_id=lm.eos_token_id, annotations=options.annotations,
                  max_length=options.max_length)  # fmt: skip
    train, _ = build_examples(lm, train_problems, **kwargs)
    heldout, _ = build_examples(lm, heldout_problems, **kwargs)
    try:
        result = train_sft(options, student, train, heldout, heldout_problems=heldout_problems)
    except KeyboardInterrupt:
        logging.getLogger("sft").warning("interrupted; continue with: %s", again)
        return 130
    if result.stopped == "interrupted":
        print(f"interrupted at step {result.steps} of {result.max_steps}; continue with: {again}")
        return 130
    report(config, result, len(train))
    return 0


# settings a resumed run may change (the rest must be the same as when it started)
RESUMABLE = ("resume", "budget_min", "progress", "params", "init_from", "device")


def check_resume(config: SFTRunConfig) -> None:
    """End the script with one line when ``--resume`` changes a setting the stopped run was made with."""
    saved_file = run_dir(config.sft) / "config.json"
    if not saved_file.is_file():
        return
    saved, now = json.loads(saved_file.read_text()), to_dict(config)
    changed = [f"--{name.replace('_', '-')}: was {saved[section][name]!r}, now {value!r}"
               for section, values in now.items() for name, value in values.items()
               if name not in RESUMABLE and _plain(saved.get(section, {}).get(name)) != _plain(value)]  # fmt: skip
    if changed:
        sys.exit(f"sft.py: error: --resume with other settings than the run's ({'; '.join(changed)}); resume with the "
                 "same flags or start a new run with --run-name NAME")  # fmt: skip


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def report(config: SFTRunConfig, result: SFTResult, num_train: int) -> None:
    """The held-out record of the run, where its checkpoints are, and the commands that come next."""
    options = config.sft
    directory = run_dir(options)
    print(f"\nSFT run {directory}: {result.steps} of {result.max_steps} steps ({result.steps * options.batch_size} "
          f"examples of {num_train}), {result.minutes:.1f} min, {result.stopped}")  # fmt: skip
    print(f"held-out: the last {options.heldout_size} problems of the train split, never trained on")
    columns = [k for k in ("loss", "accuracy", "format_accuracy", "wrong_answer", "format_failure",
                           "tokens_per_problem") if result.evals and k in result.evals[-1]]  # fmt: skip
    print(f"{'step':>6s} {'examples':>9s}" + "".join(f"{c:>19s}" for c in columns))
    for record in result.evals:
        print(f"{record['step']:6d} {record['examples']:9d}" + "".join(f"{record.get(c, float('nan')):19.4f}"
                                                                      for c in columns))  # fmt: skip
    if result.best:
        print(f"best ({options.metric}): step {result.best['step']}: {directory / 'checkpoints' / 'best'}")
    if result.checkpoint is None:
        return
    print(f"final: {result.checkpoint}")
    data = options.data or "openai/gsm8k"
    common = f"--task gsm8k --data {shlex.quote(data)} --answer strict --prompt {shlex.quote(options.prompt)}"
    print("next (the same prompt as SFT):")
    print(f"  python scripts/evaluate.py {common} --max-tokens 256 --size 200 --checkpoint {result.checkpoint}")
    print(f"  python scripts/selfplay.py {common} --max-tokens 256 --eval-max-tokens 256 --init-from "
          f"{result.checkpoint} --run-name sft-rl")  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_script("sft.py", main))
