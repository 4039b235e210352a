"""Supervised fine-tuning of the student on reference solutions: the warm start before self-play.

The loop is transformers' :class:`~transformers.Trainer`, not TRL's ``SFTTrainer`` and not the
project's :class:`~agents.training.learner.Learner`:

- the examples are tokenised here, through the env's and evaluator's solve prompt
  (:mod:`agents.warmstart.data`), with the prompt masked out of the labels; what ``SFTTrainer`` adds
  on top of ``Trainer`` (chat templating, completion masks, packing) would be bypassed, and it would
  put TRL, whose SFT arguments have changed from release to release, on SFT's run-time path;
- ``Trainer`` gives the rest, maintained: AdamW with linear warm-up and decay, gradient accumulation
  with loss normalised over the tokens of the whole batch, periodic held-out loss, checkpoints that
  resume exactly (weights, optimizer, scheduler, RNG states, position in the data), TensorBoard;
- the Learner is built for RL (group advantages, KL, value head, replay) and steps one batch at a
  time; SFT would have to re-implement the data order, evaluation and resume around it.

What the project needs is added as callbacks: a time budget (``budget_min``, with the schedule
sized to it by timing a few passes first), greedy generation on held-out problems (format and
accuracy, graded like :mod:`agents.alphazero.evaluate`), the intermediate score handed to a caller
(the HPO pruner), and the project's checkpoint format (:func:`agents.training.checkpoint.save_checkpoint`,
loaded by ``selfplay.py --init-from`` and ``evaluate.py --checkpoint``) for ``best`` and the final step.

A run directory ``<runs_dir>/<run_name>/`` holds ``config.json``, ``progress.json`` (the step budget
and the minutes spent, for resume), ``evals.jsonl``, TensorBoard events, ``trainer/checkpoint-N``
(Trainer's resumable state) and ``checkpoints/{best,step-N}`` (the project's format).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.trainer_callback import PrinterCallback

from agents.student import Student
from agents.training.checkpoint import save_checkpoint
from agents.warmstart.callbacks import METRICS, SFTCallbacks, graceful_interrupt
from agents.warmstart.data import Collator
from azgym.config import check_fields, option, raise_problems
from azgym.tasks.base import Problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on reference solutions: data, schedule, held-out evaluation, output."""

    run_name: str = option("sft", "the run directory is <runs-dir>/<run-name>")
    runs_dir: str = option("runs", "folder of all runs (tensorboard --logdir runs)")
    resume: bool = option(False, "continue <runs-dir>/<run-name> from its newest trainer checkpoint")
    params: str = option(
        "",
        "JSON of hyper-parameters written by hpo.py (or a flat {name: value} object); flags "
        "given explicitly win over it",
    )
    data: str = option(
        "", "GSM8K: a .jsonl/.parquet file, a folder holding train.jsonl, or a Hub id ('' = openai/gsm8k)"
    )
    prompt: str = option(
        "task",
        "solve prompt's system message: task, bare or the text; must match the --prompt of selfplay.py and evaluate.py",
    )
    annotations: bool = option(
        True, "keep GSM8K's <<48/2=24>> calculator annotations in the responses (--no-annotations strips them)"
    )
    train_size: int = option(0, "training problems: the first N of the train split before the held-out ones (0: all)")
    heldout_size: int = option(64, "held-out problems: the last N of the train split, never trained on")
    max_length: int = option(512, "longest prompt + response in tokens; longer examples are dropped, never cut")
    learning_rate: float = option(2e-4, "peak AdamW learning rate (after warm-up, then linear decay to 0)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "fraction of the steps spent warming the learning rate up linearly")
    batch_size: int = option(8, "examples per optimizer step")
    micro_batch_size: int = option(4, "examples per forward pass (the step accumulates batch-size / this)")
    max_grad_norm: float = option(1.0, "global gradient-norm clip")
    bf16: bool = option(
        False,
        "bfloat16 mixed precision (float32 weights, bfloat16 matmuls): ~1.4x faster on a "
        "CPU with AVX512-BF16/AMX or a recent GPU; --no-bf16 for float32 throughout",
    )
    epochs: float = option(1.0, "passes over the training problems when --max-steps is 0")
    max_steps: int = option(0, "optimizer steps (0: --epochs passes, or fewer if --budget-min allows fewer)")
    budget_min: float = option(
        0.0,
        "wall-clock minutes of training: the schedule is sized to it by timing a "
        "few passes; training stops with a checkpoint when time is up (0: none)",
    )
    eval_every: int = option(20, "optimizer steps between held-out evaluations and trainer checkpoints")
    metric: str = option(
        "loss",
        "held-out metric that picks checkpoints/best and that hpo.py optimises: loss "
        "(response tokens' NLL), accuracy or format_accuracy (greedy, needs --generate-size)",
        choices=tuple(METRICS),
    )
    generate_size: int = option(
        0, "held-out problems also answered greedily at each evaluation (format, accuracy, tokens); 0: loss only"
    )
    generate_max_tokens: int = option(256, "response tokens per problem in that generation")
    seed: int = option(0, "seeds the data order, dropout and the value head")
    progress: bool = option(True, "show progress bars (--no-progress for logs only)")

    def __post_init__(self):
        positive = ("heldout_size", "max_length", "batch_size", "micro_batch_size", "eval_every", "generate_max_tokens")
        raise_problems(
            self,
            check_fields(
                self,
                {
                    **{name: (getattr(self, name) >= 1, ">= 1") for name in positive},
                    **{
                        name: (getattr(self, name) >= 0, ">= 0")
                        for name in ("train_size", "max_steps", "generate_size", "weight_decay", "budget_min")
                    },
                    "learning_rate": (self.learning_rate > 0, "> 0"),
                    "max_grad_norm": (self.max_grad_norm > 0, "> 0"),
                    "epochs": (self.epochs > 0, "> 0"),
                    "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
                    "micro_batch_size": (
                        self.micro_batch_size >= 1 and self.batch_size % self.micro_batch_size == 0,
                        f"a divisor of batch_size ({self.batch_size})",
                    ),
                    "generate_size": (
                        self.generate_size >= 1 or self.metric == "loss",
                        f">= 1 for metric {self.metric} (it is measured by generating)",
                    ),
                    "run_name": (
                        bool(self.run_name.strip()) and "/" not in self.run_name,
                        "a non-empty name without '/'",
                    ),
                    "prompt": (bool(self.prompt.strip()), "'task', 'bare' or a non-empty message"),
                },
            ),
        )

    @property
    def accumulation(self) -> int:
        return self.batch_size // self.micro_batch_size


@dataclass
class SFTResult:
    """What a run did: its steps, held-out evaluations and checkpoints."""

    steps: int  # optimizer steps taken in all (over resumes)
    max_steps: int  # the schedule's length
    stopped: str  # done, budget, interrupted (Ctrl-C), caller (on_evaluate asked: a pruned trial) or stopped
    evals: list[dict] = field(default_factory=list)  # one record per held-out evaluation, in order
    best: dict | None = None  # the evaluation with the best metric
    checkpoint: Path | None = None  # the final project checkpoint (None when not saved)
    minutes: float = 0.0  # training time in all (over resumes)


def run_dir(config: SFTConfig) -> Path:
    return Path(config.runs_dir) / config.run_name


def train_sft(
    config: SFTConfig,
    student: Student,
    train: Sequence[dict],
    heldout: Sequence[dict],
    *,
    heldout_problems: Sequence[Problem] = (),
    on_evaluate: Callable[[int, dict], bool] | None = None,
    save: bool = True,
    callbacks: Sequence = (),
) -> SFTResult:
    """Fine-tune ``student`` on ``train`` examples (:func:`~agents.warmstart.data.build_examples`),
    evaluating on ``heldout`` every ``eval_every`` steps and at the end.

    ``heldout_problems``: the held-out problems (for ``generate_size`` greedy answers). ``on_evaluate(step,
    record)`` is called after each evaluation after step 0 (``record``: step, examples seen, ``loss`` and
    the generated metrics); returning True stops training at once, with no final evaluation or checkpoint.
    ``save`` writes trainer checkpoints (resume), ``checkpoints/best`` and the final ``checkpoints/step-N``.
    With ``config.resume`` training continues from the newest trainer checkpoint in the run directory.
    A first Ctrl-C (in the main thread) stops after the current step with a trainer checkpoint, a second
    one at once; either way the run resumes.
    """
    from torch.utils.tensorboard import SummaryWriter
    from transformers import Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    if not train or not heldout:
        raise ValueError(f"SFT needs training and held-out examples, got {len(train)} and {len(heldout)}")
    if config.generate_size > len(heldout_problems):
        raise ValueError(f"generate_size {config.generate_size} > {len(heldout_problems)} held-out problems given")
    directory = run_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    progress_file = directory / "progress.json"
    before = json.loads(progress_file.read_text()) if config.resume and progress_file.is_file() else {}
    trainer_dir = directory / "trainer"
    resume_from = _latest_trainer_checkpoint(trainer_dir) if config.resume else None
    max_steps = int(before.get("max_steps") or 0) or plan_steps(config, student, train, heldout)
    elapsed_before = float(before.get("seconds", 0.0)) if resume_from else 0.0
    progress = {"max_steps": max_steps, "seconds": elapsed_before}
    progress_file.write_text(json.dumps(progress))

    torch.manual_seed(config.seed)
    cpu = student.device.type == "cpu"
    args = TrainingArguments(
        output_dir=str(trainer_dir),
        max_steps=max_steps,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.accumulation,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=round(config.warmup_ratio * max_steps),
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        eval_strategy="steps",
        eval_steps=config.eval_every,
        eval_on_start=save and resume_from is None,  # the held-out loss before training, for the record
        save_strategy="steps" if save else "no",
        save_steps=config.eval_every,
        save_total_limit=2,
        logging_steps=max(1, min(10, config.eval_every)),
        prediction_loss_only=True,
        label_names=["labels"],
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not config.progress,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=cpu,
        dataloader_num_workers=0,
    )
    writer = SummaryWriter(str(directory))
    resumed_step = int(resume_from.name.split("-")[-1]) if resume_from else None
    hook = SFTCallbacks(
        config,
        student,
        heldout_problems,
        directory,
        writer,
        on_evaluate,
        save,
        resumed_step,
        started=time.perf_counter(),
        elapsed_before=elapsed_before,
    )
    trainer = Trainer(
        model=student.model,
        args=args,
        data_collator=Collator(student.pad_id),
        train_dataset=list(train),
        eval_dataset=list(heldout),
        callbacks=[TensorBoardCallback(writer), hook, *callbacks],
    )
    if not config.progress:  # the trainer's log lines go through logging (on_log) instead of print
        trainer.remove_callback(PrinterCallback)
    if resume_from is not None:
        logger.info("resuming from %s", resume_from)
    with graceful_interrupt(hook):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    steps = trainer.state.global_step
    stopped = (
        "interrupted"
        if hook.interrupted
        else "caller"
        if hook.stopped_by_caller
        else "budget"
        if hook.over_budget
        else "done"
        if steps >= max_steps
        else "stopped"
    )
    checkpoint = None
    if stopped not in ("caller", "interrupted") and save:  # the last step was evaluated (see SFTCallbacks.on_step_end)
        extra = {"sft": {"step": steps, "max_steps": max_steps, "eval": hook.evals[-1], "prompt": config.prompt}}
        checkpoint = save_checkpoint(directory / "checkpoints", hook.learner(steps), extra=extra)
        logger.info("checkpoint %s", checkpoint)
    progress["seconds"] = hook.seconds()
    progress_file.write_text(json.dumps(progress))
    writer.close()
    return SFTResult(
        steps=steps,
        max_steps=max_steps,
        stopped=stopped,
        evals=hook.evals,
        best=hook.best,
        checkpoint=checkpoint,
        minutes=progress["seconds"] / 60,
    )


def plan_steps(config: SFTConfig, student: Student, train: Sequence[dict], heldout: Sequence[dict]) -> int:
    """The schedule's length: ``max_steps``, else ``epochs`` passes, cut to what ``budget_min`` allows.

    The budget's share is measured: a few timed forward + backward passes on training batches (their
    gradients are dropped) give the seconds per step, and a held-out evaluation is counted as a third
    of a training pass per example. Generation during evaluation is not counted (the budget still
    stops training when it runs out).
    """
    if config.max_steps:
        return config.max_steps
    steps = max(1, math.ceil(config.epochs * len(train) / config.batch_size))
    if not config.budget_min:
        return steps
    per_example = _seconds_per_example(student, train, config)
    per_step = per_example * config.batch_size + per_example / 3 * len(heldout) / config.eval_every
    affordable = max(1, int(0.95 * 60 * config.budget_min / per_step))
    logger.info(
        "budget %.1f min: %.2f s per step (measured) -> %d steps (one pass over the data: %d)",
        config.budget_min,
        per_step,
        min(affordable, steps),
        steps,
    )
    return min(affordable, steps)


def _seconds_per_example(student: Student, train: Sequence[dict], config: SFTConfig, passes: int = 2) -> float:
    rng = np.random.default_rng(config.seed)
    collate = Collator(student.pad_id)
    model = student.model
    model.train()
    times = []
    for i in range(passes + 1):  # the first pass warms up and is not counted
        picked = rng.choice(len(train), size=min(config.micro_batch_size, len(train)), replace=False)
        batch = {k: v.to(student.device) for k, v in collate([train[j] for j in picked]).items()}
        start = time.perf_counter()
        with torch.autocast(student.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = model(**batch).loss
        loss.backward()
        if i:
            times.append((time.perf_counter() - start) / len(picked))
    model.zero_grad(set_to_none=True)
    return float(np.mean(times))


def _latest_trainer_checkpoint(root: Path) -> Path | None:
    found = [(int(p.name.split("-")[-1]), p) for p in root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found)[1] if found else None
