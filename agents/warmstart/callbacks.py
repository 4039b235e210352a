"""The SFT run's callbacks on transformers' Trainer: the time budget, greedy generation at each held-out
evaluation, keep-best in the project's checkpoint format, the caller's hook (the HPO pruner), and Ctrl-C
that stops after the step with a checkpoint (:mod:`agents.warmstart.sft` runs the Trainer)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time

from transformers import TrainerCallback

from agents.training.checkpoint import save_checkpoint
from agents.training.learner import Learner, LearnerConfig

logger = logging.getLogger(__name__)

METRICS = {"loss": "min", "accuracy": "max", "format_accuracy": "max"}  # held-out metric -> its better direction
GENERATED = ("accuracy", "format_accuracy", "wrong_answer", "format_failure", "tokens_per_problem")


class SFTCallbacks(TrainerCallback):
    """Trainer callbacks: the time budget, generation at evaluation, keep-best, the caller's hook."""

    def __init__(
        self, config, student, problems, directory, writer, on_evaluate, save, resumed_step, *, started, elapsed_before
    ):
        self.config, self.student, self.problems = config, student, list(problems)[: config.generate_size]
        self.directory, self.writer, self.on_evaluate_fn, self.save = directory, writer, on_evaluate, save
        self.started, self.elapsed_before = started, elapsed_before
        self.evals: list[dict] = []
        self.best: dict | None = None
        self.over_budget = self.stopped_by_caller = self.interrupted = False
        self._learner: Learner | None = None
        records = directory / "evals.jsonl"
        if resumed_step is not None and records.is_file():  # keep the evaluations up to the resumed step
            evals = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
            self.evals = [r for r in evals if r["step"] <= resumed_step]
            self.best = best_record(self.evals, config.metric)
        records.write_text("".join(json.dumps(r) + "\n" for r in self.evals))

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def learner(self, step: int) -> Learner:
        """A learner around the student, for the checkpoint format (its optimizer is never stepped)."""
        if self._learner is None:
            self._learner = Learner(
                self.student,
                LearnerConfig(
                    loss="legacy", learning_rate=self.config.learning_rate, weight_decay=self.config.weight_decay
                ),
            )
        self._learner.step_count = step
        return self._learner

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:  # Ctrl-C: a resumable checkpoint (and the evaluation only if one is due now)
            control.should_training_stop, control.should_save = True, self.save
            return control
        budget = self.config.budget_min
        if budget and self.seconds() >= 60 * budget and state.global_step < state.max_steps:
            logger.info("time budget of %.1f min reached at step %d of %d", budget, state.global_step, state.max_steps)
            self.over_budget = control.should_training_stop = True
        if control.should_training_stop:  # the last step: evaluate it (the final checkpoint's record) and save
            control.should_evaluate = True
            control.should_save = self.save
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.config.progress and logs and "loss" in logs:
            logger.info(
                "step %d: loss %.4f, learning rate %.3g, grad norm %.3g",
                state.global_step,
                logs["loss"],
                logs.get("learning_rate", float("nan")),
                logs.get("grad_norm", float("nan")),
            )
        return control

    def on_save(self, args, state, control, **kwargs):
        (self.directory / "progress.json").write_text(
            json.dumps({"max_steps": state.max_steps, "seconds": self.seconds()})
        )
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        step = state.global_step
        record = {
            "step": step,
            "examples": step * self.config.batch_size,
            "loss": float(metrics["eval_loss"]),
            "minutes": round(self.seconds() / 60, 2),
        }
        if self.problems:
            record.update(self._generate())
        for key in GENERATED:
            if key in record:
                self.writer.add_scalar(f"eval/{key}", record[key], step)
        self.evals.append(record)
        with (self.directory / "evals.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "examples", "minutes"))
        logger.info("held-out at step %d: %s", step, shown)
        if step and self.save and better(record, self.best, self.config.metric):
            save_checkpoint(
                self.directory / "checkpoints",
                self.learner(step),
                name="best",
                extra={"sft": {"step": step, "eval": record, "prompt": self.config.prompt}},
            )
        if step and better(record, self.best, self.config.metric):
            self.best = record
        if step and self.on_evaluate_fn is not None and self.on_evaluate_fn(step, record):
            self.stopped_by_caller = control.should_training_stop = True
            control.should_save = False
        return control

    def _generate(self) -> dict:
        from agents.alphazero.evaluate import evaluate
        from azgym.tasks import gsm8k

        lm = self.student.backend()  # a fresh backend: no generation state from before the weights changed
        result = evaluate(
            lm,
            self.problems,
            gsm8k,
            max_tokens=self.config.generate_max_tokens,
            progress=False,
            prompt=self.config.prompt,
            answer="strict",
        )
        return {key: result[key] for key in GENERATED}


@contextlib.contextmanager
def graceful_interrupt(hook: SFTCallbacks):
    """While training in the main thread: the first SIGINT asks ``hook`` to stop after this step, the next raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if hook.interrupted:
            raise KeyboardInterrupt
        hook.interrupted = True
        logger.warning("interrupted: stopping after this step with a checkpoint (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def better(record: dict, best: dict | None, metric: str) -> bool:
    if best is None:
        return True
    return record[metric] < best[metric] if METRICS[metric] == "min" else record[metric] > best[metric]


def best_record(evals: list[dict], metric: str) -> dict | None:
    best = None
    for record in evals:
        if record["step"] and better(record, best, metric):
            best = record
    return best
