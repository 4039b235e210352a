"""Hyper-parameter search for SFT: Optuna TPE + successive halving, the study kept in SQLite.

    python scripts/hpo.py --data ../shared/data/gsm8k                       # CPU: 8 small trials
    python scripts/hpo.py --data ../shared/data/gsm8k --trials 12           # continue the same study to 12
    python scripts/hpo.py --preset gpu --data openai/gsm8k                  # one GPU: 32 bigger trials
    python scripts/sft.py --data ../shared/data/gsm8k --params runs/sft-hpo/best_params.json --budget-min 30

Searches learning rate (log scale), batch size, weight decay and LoRA rank (alpha = rank). Every trial
fine-tunes a fresh student on the first ``--trial-examples`` training problems and reports its held-out
``--metric`` (default: the response tokens' loss on the last ``--heldout-size`` train problems)
``--reports`` times; the successive-halving pruner stops the trials that fall behind. The study is an
SQLite file (``--storage``): stopping (Ctrl-C, a kill) and running the same command again continues it,
its finished trials kept. Ends with the trials table and the best parameters, written to a JSON that
``sft.py --params`` reads. Needs ``pip install -e ".[hpo]"`` (Optuna).

Presets: ``cpu`` (default; 8 trials of 96 examples at batch sizes 4, 8, 16, learning rates 1e-5 to 1e-3,
weight decay 0 to 0.1, LoRA ranks 8, 16, 32; held-out loss on 32 problems reported 3 times; eta 2; 4 random
start-up trials; minutes per trial on 2 cores: to be measured) and ``gpu`` (32 trials of 2048 examples at
batch sizes 16, 32, 64, held-out loss on 200 problems reported 4 times, eta 3, 8 start-up trials).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from agents.student import Student, StudentConfig
from agents.training.checkpoint import CheckpointError, build_student
from agents.warmstart import hpo as search
from agents.warmstart.data import build_examples, split_heldout
from agents.warmstart.sft import METRICS, SFTConfig
from azgym.cli import parse_config, run_script, to_dict
from azgym.prompts import system_prompt
from azgym.tasks import DataError, load_problems

# sft flags that each trial sets itself: passing them to hpo.py is an error that names the alternative
PER_TRIAL = {
    "--run-name": "--study", "--resume": "running the same command again (the study resumes)",
    "--params": "nothing (the study searches them)", "--max-steps": "--trial-examples", "--epochs": "--trial-examples",
    "--budget-min": "--timeout-min", "--eval-every": "--reports", "--train-size": "--trial-examples",
    "--learning-rate": "--lr-min/--lr-max", "--batch-size": "--batch-sizes", "--lora-r": "--lora-ranks",
    "--lora-alpha": "--lora-ranks (alpha = rank)",
}  # fmt: skip


@dataclass(frozen=True)
class HPORunConfig:
    """Hyper-parameter search for SFT: Optuna TPE sampling, successive-halving pruning, a resumable SQLite study."""

    student: StudentConfig = field(default_factory=StudentConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(heldout_size=32, progress=False))
    hpo: search.HPOConfig = field(default_factory=search.HPOConfig)


def cpu_preset() -> HPORunConfig:
    return HPORunConfig()


def gpu_preset() -> HPORunConfig:
    cpu = cpu_preset()
    return HPORunConfig(
        student=replace(cpu.student, device="cuda"),
        sft=replace(cpu.sft, heldout_size=200, batch_size=32, micro_batch_size=16),
        hpo=replace(cpu.hpo, trials=32, trial_examples=2048, reports=4, batch_sizes="16,32,64", reduction_factor=3,
                    startup_trials=8),
    )  # fmt: skip


PRESETS = {"cpu": cpu_preset, "gpu": gpu_preset}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        flag = arg.split("=", 1)[0].replace("--no-", "--")
        if flag in PER_TRIAL:
            sys.exit(f"hpo.py: error: {arg.split('=', 1)[0]}: each trial sets it; use {PER_TRIAL[flag]}")
    config = parse_config(HPORunConfig, argv, presets=PRESETS, default_preset="cpu")
    hpo = config.hpo
    try:
        import optuna
    except ImportError:
        sys.exit('hpo.py: error: Optuna is not installed; pip install -e ".[hpo]"')
    study_dir = Path(config.sft.runs_dir) / hpo.study
    try:
        problems = load_problems("gsm8k", config.sft.data, "train")
        train_problems, heldout_problems = split_heldout(problems, config.sft.heldout_size)
    except DataError as err:
        sys.exit(f"hpo.py: error: --data {config.sft.data or 'openai/gsm8k'}: {err}")
    if len(train_problems) < hpo.trial_examples:
        sys.exit(f"hpo.py: error: --trial-examples {hpo.trial_examples} > the {len(train_problems)} training problems")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.INFO)
    url = search.storage_url(hpo.storage, study_dir / "study.db")
    direction = "minimize" if METRICS[config.sft.metric] == "min" else "maximize"
    try:
        study = search.open_study(hpo, url, direction, search.study_settings(config), seed=config.sft.seed)
    except ValueError as err:
        sys.exit(f"hpo.py: error: {err}")
    (study_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1))

    def new_student(student_config: StudentConfig) -> Student:
        torch.manual_seed(config.sft.seed)
        return build_student(student_config)

    try:
        first = new_student(config.student)
    except CheckpointError as err:
        sys.exit(f"hpo.py: error: --init-from: {err}")
    lm = first.backend()
    kwargs = dict(system=system_prompt("gsm8k", config.sft.prompt), eos_token_id=lm.eos_token_id,
                  annotations=config.sft.annotations, max_length=config.sft.max_length)  # fmt: skip
    train, _ = build_examples(lm, train_problems[: 2 * hpo.trial_examples], **kwargs)  # some may be too long
    heldout, _ = build_examples(lm, heldout_problems, **kwargs)
    del first, lm
    if len(train) < hpo.trial_examples:
        sys.exit(f"hpo.py: error: --trial-examples {hpo.trial_examples}: only {len(train)} of the first "
                 f"{2 * hpo.trial_examples} problems fit --max-length {config.sft.max_length}; raise it")  # fmt: skip
    train = train[: hpo.trial_examples]
    objective = search.sft_objective(config, train, heldout, heldout_problems, new_student, study_dir)
    try:
        search.run_study(study, objective, hpo.trials, hpo.timeout_min)
    except KeyboardInterrupt:
        logging.getLogger("hpo").warning("interrupted; the finished trials are kept. Continue with the same command.")
        return 130
    report(config, study, study_dir)
    return 0


def report(config: HPORunConfig, study, study_dir: Path) -> None:
    """The trials table, the counts (complete / pruned / failed), and the best parameters' file."""
    found = search.counts(study)
    print(f"\nstudy {study.study_name!r} ({study.direction.name.lower()} held-out {config.sft.metric}): "
          f"{found['complete']} complete, {found['pruned']} pruned, {found['fail']} failed")  # fmt: skip
    print(search.trials_table(study))
    try:
        best = search.best_record(study, config)
    except ValueError:
        print("no trial has completed yet: no best parameters")
        return
    out = Path(config.hpo.out or study_dir / "best_params.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(best, indent=1) + "\n")
    print(f"best: trial {best['best_trial']}, {config.sft.metric} {best['value']:.4f}, params {best['params']}")
    print(f"written: {out}")
    data = config.sft.data or "openai/gsm8k"
    print(f"next: python scripts/sft.py --data {data} --params {out} --budget-min 30")


if __name__ == "__main__":
    sys.exit(run_script("hpo.py", main))
