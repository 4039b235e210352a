"""Hyper-parameter search for SFT: Optuna's TPE sampler with a successive-halving (ASHA-style) pruner.

Each trial fine-tunes a fresh student (:func:`agents.warmstart.sft.train_sft`) on the same
``trial_examples`` training examples with sampled learning rate (log scale), batch size, weight decay
and LoRA rank (alpha = rank: the adapter's scale stays 1, so the rank does not rescale the learning
rate), and reports its held-out metric ``reports`` times, at equal numbers of examples seen, so trials
with different batch sizes meet the pruner on the same resource axis. Successive halving stops a trial
at a rung where it is not in the best ``1 / reduction_factor`` of the trials that reached it.

The study lives in a database (SQLite by default): a stopped search, Ctrl-C or a killed process,
continues when started again with the same settings; finished trials (complete or pruned) are kept and
counted toward ``trials``; a trial cut off mid-way is recorded as failed and does not count. The
sampler's seed moves on with the number of trials already recorded, so a resumed study does not draw
its first trials' parameters again.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from azgym.config import check_fields, option, raise_problems

logger = logging.getLogger(__name__)

# what must stay the same when a study is continued (saved as the study's user attributes), by section
_STUDY_KEYS = {
    "student": ("model", "lora"),
    "sft": ("data", "prompt", "annotations", "heldout_size", "max_length", "metric", "generate_size"),
    "hpo": ("trial_examples", "reports", "lr_min", "lr_max", "batch_sizes", "weight_decay_max", "lora_ranks"),
}


def parse_ints(text: str) -> tuple[int, ...]:
    """A comma list of positive integers; ``()`` when empty or malformed (validation reports it).

    >>> parse_ints("4, 8,16")
    (4, 8, 16)
    >>> parse_ints("4,x")
    ()
    """
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        return ()
    return values if all(v >= 1 for v in values) else ()


@dataclass(frozen=True)
class HPOConfig:
    """The search: TPE sampling and successive-halving pruning of SFT's hyper-parameters."""

    study: str = option("sft-hpo", "study name; its trials run under <runs-dir>/<study>/")
    storage: str = option(
        "",
        "Optuna storage: an SQLite file or a database URL ('' = <runs-dir>/<study>/study.db); "
        "a stopped study continues from it",
    )
    trials: int = option(
        8, "finished trials (complete or pruned) the study should hold; a continued study runs only the rest"
    )
    trial_examples: int = option(
        96,
        "training examples per trial (the first N of the training problems; a trial's steps are this / its batch size)",
    )
    reports: int = option(3, "held-out evaluations per trial, at equal example counts, each reported to the pruner")
    reduction_factor: int = option(2, "successive halving's eta: a trial goes past a rung only in the best 1/eta")
    startup_trials: int = option(4, "trials sampled at random before TPE models the finished ones")
    lr_min: float = option(1e-5, "lowest learning rate searched (log scale)")
    lr_max: float = option(1e-3, "highest learning rate searched")
    batch_sizes: str = option("4,8,16", "batch sizes searched (a comma list)")
    weight_decay_max: float = option(0.1, "weight decay is searched in [0, this] (0: not searched)")
    lora_ranks: str = option(
        "8,16,32", "LoRA ranks searched, with alpha = rank ('': not searched; ignored with --no-lora)"
    )
    timeout_min: float = option(0.0, "start no new trial after this many minutes (0: no limit)")
    out: str = option("", "best parameters JSON, read by sft.py --params ('' = <runs-dir>/<study>/best_params.json)")

    def __post_init__(self):
        sizes = parse_ints(self.batch_sizes)
        per_report = self.trial_examples // max(self.reports, 1)
        raise_problems(
            self,
            check_fields(
                self,
                {
                    **{name: (getattr(self, name) >= 1, ">= 1") for name in ("trials", "trial_examples", "reports")},
                    "reduction_factor": (self.reduction_factor >= 2, ">= 2"),
                    "startup_trials": (self.startup_trials >= 0, ">= 0"),
                    "lr_min": (0 < self.lr_min <= self.lr_max, f"> 0 and <= lr_max ({self.lr_max})"),
                    "batch_sizes": (bool(sizes), "a comma list of positive integers, e.g. 4,8,16"),
                    "trial_examples": (
                        self.trial_examples % self.reports == 0 and all(per_report % b == 0 for b in sizes),
                        f"a multiple of reports x each batch size ({self.reports} x {max(sizes or (1,))})",
                    ),
                    "weight_decay_max": (self.weight_decay_max >= 0, ">= 0"),
                    "lora_ranks": (
                        not self.lora_ranks.strip() or bool(parse_ints(self.lora_ranks)),
                        "a comma list of positive integers, or '' not to search it",
                    ),
                    "timeout_min": (self.timeout_min >= 0, ">= 0"),
                    "study": (bool(self.study.strip()) and "/" not in self.study, "a non-empty name without '/'"),
                },
            ),
        )

    @property
    def examples_per_report(self) -> int:
        return self.trial_examples // self.reports


def storage_url(storage: str, default: Path) -> str:
    """An Optuna storage URL: a database URL as given, else an SQLite file (``default`` when empty).

    >>> storage_url("", Path("runs/s/study.db")).endswith("runs/s/study.db")
    True
    >>> storage_url("postgresql://host/db", Path("x"))
    'postgresql://host/db'
    """
    if "://" in storage:
        return storage
    path = Path(storage or default).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def suggest(trial, hpo: HPOConfig, *, lora: bool = True) -> dict[str, Any]:
    """A trial's parameters (names of :data:`agents.warmstart.params.PARAMS`)."""
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", hpo.lr_min, hpo.lr_max, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(parse_ints(hpo.batch_sizes))),
    }
    if hpo.weight_decay_max > 0:
        params["weight_decay"] = trial.suggest_float("weight_decay", 0.0, hpo.weight_decay_max)
    ranks = parse_ints(hpo.lora_ranks)
    if lora and ranks:
        params["lora_r"] = params["lora_alpha"] = trial.suggest_categorical("lora_r", list(ranks))
    return params


def open_study(hpo: HPOConfig, url: str, direction: str, settings: dict[str, Any], *, seed: int = 0):
    """Create the study, or load it to continue; ``settings`` must match those it was made with."""
    import optuna

    with warnings.catch_warnings():  # the heartbeat is "experimental"; it fails trials a killed process left running
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    try:
        previous = optuna.load_study(study_name=hpo.study, storage=storage)
    except KeyError:
        previous = None
    if previous is not None:
        if previous.direction.name.lower() != direction:
            raise ValueError(
                f"study {hpo.study!r} in {url} was made to {previous.direction.name.lower()}; use its "
                f"metric again or start a new study with --study NAME"
            )
        changed = {k: (previous.user_attrs.get(k), v) for k, v in settings.items() if previous.user_attrs.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: was {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"study {hpo.study!r} in {url} was made with other settings ({details}); continue it with "
                "the same settings or start a new study with --study NAME"
            )
    count = len(previous.trials) if previous is not None else 0
    sampler = optuna.samplers.TPESampler(seed=seed + count, n_startup_trials=hpo.startup_trials)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=hpo.examples_per_report, reduction_factor=hpo.reduction_factor
    )
    study = optuna.create_study(
        study_name=hpo.study, storage=storage, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    if previous is None:
        for key, value in settings.items():
            study.set_user_attr(key, value)
    else:
        logger.info("continuing study %r: %d trials recorded (%s)", hpo.study, count, counts(study))
    return study


def counts(study) -> dict[str, int]:
    """Trials of ``study`` by state: complete, pruned, fail, running."""
    found: dict[str, int] = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    for trial in study.get_trials(deepcopy=False):
        name = trial.state.name.lower()
        found[name] = found.get(name, 0) + 1
    return found


def run_study(study, objective: Callable, trials: int, timeout_min: float = 0.0):
    """Run ``objective`` until ``study`` holds ``trials`` finished (complete or pruned) trials."""
    import optuna
    from optuna.trial import TrialState

    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
    if finished >= trials:
        logger.info("study %r already holds %d finished trials (asked: %d)", study.study_name, finished, trials)
        return study
    stop = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(objective, callbacks=[stop], timeout=60 * timeout_min or None, gc_after_trial=True)
    return study


def sft_objective(
    config, train: Sequence[dict], heldout: Sequence[dict], heldout_problems, build_student: Callable, runs_dir: Path
) -> Callable:
    """The objective of one trial: SFT of a fresh student with the trial's parameters, its held-out metric
    reported after every ``examples_per_report`` examples (the pruner may stop it there), the last one returned.

    ``config`` has ``student``, ``sft`` and ``hpo`` sections; ``build_student(student_config)`` makes a student.
    """
    import optuna

    from agents.warmstart.params import apply_params
    from agents.warmstart.sft import train_sft

    hpo, metric = config.hpo, config.sft.metric
    if len(train) < hpo.trial_examples:
        raise ValueError(f"trial_examples {hpo.trial_examples} > the {len(train)} training examples; lower it")

    def objective(trial) -> float:
        params = suggest(trial, hpo, lora=config.student.lora)
        trial.set_user_attr("params", params)
        run = apply_params(config, params, source=f"trial {trial.number}")
        batch = run.sft.batch_size
        sft = replace(
            run.sft,
            run_name=f"trial-{trial.number:03d}",
            runs_dir=str(runs_dir),
            resume=False,
            params="",
            max_steps=hpo.trial_examples // batch,
            eval_every=hpo.examples_per_report // batch,
            budget_min=0.0,
            train_size=0,
        )

        def report(step: int, record: dict) -> bool:
            trial.report(record[metric], step=record["examples"])
            return trial.should_prune()

        result = train_sft(
            sft,
            build_student(run.student),
            train[: hpo.trial_examples],
            heldout,
            heldout_problems=heldout_problems,
            on_evaluate=report,
            save=False,
        )
        trial.set_user_attr("evals", result.evals)
        trial.set_user_attr("minutes", round(result.minutes, 2))
        if result.stopped == "interrupted":  # Ctrl-C: the trial fails (it does not count) and the study stops
            raise KeyboardInterrupt
        if result.stopped == "caller":
            raise optuna.TrialPruned(f"pruned after {result.evals[-1]['examples']} examples")
        return result.evals[-1][metric]

    return objective


def best_record(study, config) -> dict[str, Any]:
    """What ``best_params.json`` holds: the best trial's parameters (``params``, read by sft.py) and the study."""
    best = study.best_trial  # ValueError when no trial completed
    return {
        "params": best.user_attrs.get("params", best.params),
        "value": best.value,
        "metric": config.sft.metric,
        "direction": study.direction.name.lower(),
        "best_trial": best.number,
        "trials": counts(study),
        "study": study.study_name,
        "settings": dict(study.user_attrs),
    }


def study_settings(config) -> dict[str, Any]:
    """The settings a continued study must share with its start (``config``: ``student``, ``sft``, ``hpo``)."""
    return {name: getattr(getattr(config, section), name) for section, names in _STUDY_KEYS.items() for name in names}


def trials_table(study, limit: int = 12) -> str:
    """The study's trials, best first: number, state, value, examples reached, parameters."""
    from optuna.trial import TrialState

    direction = 1 if study.direction.name.lower() == "minimize" else -1
    rows = sorted(
        study.get_trials(deepcopy=False),
        key=lambda t: (t.state != TrialState.COMPLETE, direction * (t.value if t.value is not None else 0.0), t.number),
    )
    lines = [f"{'trial':>5s}  {'state':8s} {'value':>9s} {'examples':>8s}  params"]
    for t in rows[:limit]:
        value = f"{t.value:9.4f}" if t.value is not None else f"{'-':>9s}"
        reached = max(t.intermediate_values, default=0)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"{t.number:5d}  {t.state.name.lower():8s} {value} {reached:8d}  {params}")
    return "\n".join(lines)
