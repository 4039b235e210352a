"""The SFT hyper-parameter search: TPE + successive halving in an SQLite study that prunes, resumes and
writes a params file sft.py reads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from agents.warmstart import hpo  # noqa: E402
from agents.warmstart.params import apply_params, read_params  # noqa: E402
from agents.warmstart.sft import SFTConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("hpo_script", REPO / "scripts" / "hpo.py")
hpo_script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hpo_script)

SEARCH = hpo.HPOConfig(trial_examples=16, reports=2, batch_sizes="2,4", lora_ranks="2,4", startup_trials=1)
SETTINGS = {"metric": "loss", "trial_examples": 16}


def scripted(values: dict[int, list[float]], calls: list | None = None):
    """An objective that reports ``values[trial number]`` at 8, 16, ... examples, as an SFT trial would."""

    def objective(trial):
        hpo.suggest(trial, SEARCH)
        for i, value in enumerate(values[trial.number]):
            trial.report(value, step=8 * (i + 1))
            if calls is not None:
                calls.append((trial.number, i))
            if trial.should_prune():
                raise optuna.TrialPruned()
        return values[trial.number][-1]

    return objective


def study_at(tmp_path, config=SEARCH, settings=SETTINGS):
    return hpo.open_study(config, hpo.storage_url(str(tmp_path / "s.db"), tmp_path), "minimize", settings)


def test_successive_halving_prunes_a_trial_behind_the_others_at_its_rung(tmp_path):
    calls = []
    study = hpo.run_study(study_at(tmp_path), scripted({0: [1.0, 0.5], 1: [5.0, 0.1], 2: [0.9, 0.4]}, calls), 3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert [c for c in calls if c[0] == 1] == [(1, 0)]  # stopped at its first report, never reached the second
    assert study.best_trial.number == 2 and hpo.counts(study)["pruned"] == 1


def test_a_stopped_study_continues_with_its_finished_trials_kept(tmp_path):
    values = {i: [1.0 / (i + 1), 1.0 / (i + 2)] for i in range(8)}

    def interrupted(trial):
        if trial.number == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second trial
        return scripted(values)(trial)

    with pytest.raises(KeyboardInterrupt):
        hpo.run_study(study_at(tmp_path), interrupted, 3)
    before = study_at(tmp_path)
    assert [t.state for t in before.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    first_params = before.trials[0].params
    study = hpo.run_study(before, scripted(values), 3)  # the same command again
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and study.trials[0].params == first_params and len(study.trials) == 4
    assert study.trials[2].params != first_params  # the sampler moved on instead of replaying its first draws
    again = hpo.run_study(study_at(tmp_path), scripted(values), 3)  # already done: no new trial
    assert len(again.trials) == 4
    with pytest.raises(ValueError, match="trial_examples: was 16, now 32"):
        study_at(tmp_path, settings={**SETTINGS, "trial_examples": 32})


def test_sft_trials_on_a_tiny_model_report_prune_and_write_params_sft_reads(tokenizer, train_examples, tmp_path):
    from agents.student import Student
    from helpers import tiny_llama

    config = hpo_script.HPORunConfig(sft=SFTConfig(heldout_size=4, progress=False), hpo=SEARCH)

    class PruneSecondTrial(optuna.pruners.BasePruner):  # "told to prune": trial 1 at its first report
        def prune(self, study, trial):
            return trial.number == 1

    def build(student_config):
        return Student.from_config(student_config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)

    train, heldout = train_examples
    objective = hpo.sft_objective(config, train, heldout, [], build, tmp_path)
    study = study_at(tmp_path, config=SEARCH, settings=hpo.study_settings(config))
    study.pruner = PruneSecondTrial()
    hpo.run_study(study, objective, 2)
    complete, pruned = study.trials
    assert (complete.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(complete.intermediate_values) == [8, 16] and sorted(pruned.intermediate_values) == [8]
    assert len(pruned.user_attrs["evals"]) == 1 and complete.value == complete.intermediate_values[16]
    path = tmp_path / "best.json"
    path.write_text(json.dumps(hpo.best_record(study, config)))
    params = read_params(path)
    assert params["lora_alpha"] == params["lora_r"] == complete.params["lora_r"]
    sft_config = apply_params(config, params)
    assert sft_config.sft.learning_rate == complete.params["learning_rate"]
    assert sft_config.sft.batch_size % sft_config.sft.micro_batch_size == 0


def test_the_script_runs_a_study_continues_it_and_writes_params_sft_reads(tiny_dir, gsm8k_dir, tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "hpo.py"), "--model", str(tiny_dir), "--data", str(gsm8k_dir),
            "--runs-dir", str(tmp_path), "--trial-examples", "8", "--reports", "2", "--batch-sizes", "2,4",
            "--lora-ranks", "2,4", "--heldout-size", "2", "--startup-trials", "1", "--max-length", "320"]  # fmt: skip
    first = subprocess.run([*args, "--trials", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "best: trial" in first.stdout and "complete" in first.stdout
    again = subprocess.run([*args, "--trials", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="sft-hpo", storage=f"sqlite:///{tmp_path / 'sft-hpo' / 'study.db'}")
    assert len(study.trials) == 2 and "continuing study" in again.stderr
    record = json.loads((tmp_path / "sft-hpo" / "best_params.json").read_text())
    assert record["trials"]["complete"] + record["trials"]["pruned"] == 2
    sft_script = importlib.util.spec_from_file_location("sft_script_for_hpo", REPO / "scripts" / "sft.py")
    module = sys.modules[sft_script.name] = importlib.util.module_from_spec(sft_script)
    sft_script.loader.exec_module(module)
    config = module.parse(["--params", str(tmp_path / "sft-hpo" / "best_params.json")])
    assert config.sft.learning_rate == record["params"]["learning_rate"] and config.student.lora_r in (2, 4)


@pytest.mark.parametrize("preset", sorted(hpo_script.PRESETS))
def test_presets_are_valid_and_their_trials_fit_the_pruner(preset):
    config = hpo_script.PRESETS[preset]()
    sizes = hpo.parse_ints(config.hpo.batch_sizes)
    assert all(config.hpo.examples_per_report % b == 0 for b in sizes) and config.hpo.trials >= 8


def test_bad_search_settings_are_one_line_errors(capsys):
    with pytest.raises(ValueError, match="multiple of reports x each batch size"):
        hpo.HPOConfig(trial_examples=100, reports=4, batch_sizes="4,8")
    with pytest.raises(ValueError, match="batch_sizes: must be a comma list"):
        hpo.HPOConfig(batch_sizes="four")
    for argv, message in [(["--learning-rate", "0.1"], "use --lr-min/--lr-max"), (["--no-resume"], "the study resumes"),
                          (["--lr-min", "0.1", "--lr-max", "0.01"], "lr_max")]:  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            hpo_script.main(argv)
        assert message in str(stop.value.code) + capsys.readouterr().err


@pytest.fixture(scope="module")
def train_examples(tokenizer, gsm8k_dir):
    from agents.student import Student, StudentConfig
    from agents.warmstart.data import build_examples, split_heldout
    from azgym.prompts import system_prompt
    from azgym.tasks import gsm8k
    from helpers import tiny_llama

    student = Student.from_config(StudentConfig(model="tiny"), model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    lm = student.backend()
    train_p, held_p = split_heldout(gsm8k.load_problems(gsm8k_dir, "train")[:40], 4, 24)
    kwargs = dict(system=system_prompt("gsm8k"), eos_token_id=lm.eos_token_id, max_length=320)
    train = build_examples(lm, train_p, **kwargs)[0][:16]
    return train, build_examples(lm, held_p, **kwargs)[0]
