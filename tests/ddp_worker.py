"""Learner steps of a tiny seeded student, shared by ``torchrun`` processes (tests/test_ddp.py) or taken alone.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT [RESUME_CHECKPOINT]

Every case takes :data:`STEPS` steps on the same global batch; each process saves what it saw after each
step (:func:`run_case`) to ``OUT/results-<rank>.pt``, and rank 0 a checkpoint after the first step to
``OUT/<case>-ckpt``. With ``RESUME_CHECKPOINT`` (written by one process) the first case also loads it and
takes one step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from agents.student import Student, StudentConfig
from agents.training.checkpoint import load_checkpoint, save_checkpoint
from agents.training.learner import DistillSample, Learner, LearnerConfig, Sample
from agents.training.samples import carried
from helpers import tiny_llama

VOCAB = 64
STEPS = 2
TREE_ADVANTAGES = (0.5, 0.5, -1.0, -1.0)  # per completion token, as tree self-play gives them
# 7 samples in 3 groups (odd: the two processes get 3 and 4), micro-batches of 2
SAMPLES = [
    Sample((5, 6, 7), (8, 9, 10, 11), 1.0, "a", value_positions=(0, 4), value_targets=(0.0, 1.0)),
    Sample((5, 6, 7), (12, 13), 0.0, "a", value_positions=(0, 2), value_targets=(0.0, -1.0)),
    Sample((5, 6, 7), (14, 15, 16), 0.0, "a", value_positions=(1,), value_targets=(-1.0,), truncated=True),
    Sample((20, 21), (22, 23, 24), 1.0, "b", value_positions=(3,), value_targets=(1.0,)),
    Sample((20, 21), (25,), 0.5, "b"),
    Sample(
        (30, 31, 32), (33, 34, 35, 36), 1.0, "c", value_positions=(2,), value_targets=(0.5,), advantages=TREE_ADVANTAGES
    ),  # fmt: skip
    Sample((30, 31, 32), (37, 38), 0.0, "c", value_positions=(0, 1, 2), value_targets=(0.0, -0.5, -1.0)),
]
DISTILL = [
    DistillSample((5, 6, 7), ((8, 9), (12,), (40, 41, 42)), (0.6, 0.3, 0.1)),
    DistillSample((20, 21), ((22,), (25, 26)), (0.25, 0.75)),
    DistillSample((30, 31, 32, 33), ((34, 35), (37,)), (1.0, 0.0)),
]
BASE = dict(learning_rate=1e-2, micro_batch_size=2)  # a large rate: the second step's ratios are clipped
CASES = {  # name: (student settings, learner settings)
    "token": ({}, dict(BASE, aggregation="token", distill_coef=0.5, kl_coef=0.05)),
    "constant": (
        {},
        dict(
            BASE, aggregation="constant", max_completion_tokens=8, drop_truncated=True, normalize_std=True, kl_coef=0.0
        ),
    ),  # fmt: skip
    "apo-full": (
        {"lora": False},
        dict(BASE, learning_rate=1e-3, loss="apo", aggregation="sequence", apo_normalize=True),
    ),  # fmt: skip
}


def make_learner(case: str, collective=None, **overrides) -> Learner:
    """A fresh student (the same seeded base and adapters in every process) and its learner (``overrides``:
    learner settings)."""
    student_settings, learner_settings = CASES[case]
    model = tiny_llama(VOCAB, seed=0)
    torch.manual_seed(1)
    tokenizer = SimpleNamespace(pad_token_id=2, eos_token_id=2)
    # float32: summing the processes' gradients is exact only where each product is (bfloat16 rounds per shape)
    config = StudentConfig(
        model="tiny-llama", lora_r=4, lora_alpha=8, lora_dropout=0.0, precision="float32", **student_settings
    )
    student = Student.from_config(config, model=model, tokenizer=tokenizer)
    return Learner(student, LearnerConfig(**{**learner_settings, **overrides}), collective)


def run_case(case: str, out: Path | None = None, collective=None) -> list[dict]:
    """:data:`STEPS` steps; after each, the gradients the optimizer stepped with (summed and clipped), the
    trainable state, the metrics and the old-policy log-probs the samples carry. Rank 0 checkpoints after the first."""
    learner = make_learner(case, collective)
    grads = {}

    def record(optimizer, args, kwargs):
        grads.update({n: p.grad.clone() for n, p in learner.student.named_parameters() if p.requires_grad})

    learner.optimizer.register_step_pre_hook(record)
    history, samples = [], SAMPLES
    for step in range(STEPS):
        metrics = learner.step(samples, DISTILL)
        samples = carried(samples, learner.last_logprobs)  # as the replay keeps them with the episodes
        history.append({"grads": dict(grads), "state": learner.student.trainable_state(), "metrics": metrics,
                        "old": {i: s.old_logprobs for i, s in enumerate(samples)}})  # fmt: skip
        if step == 0 and out is not None and (collective is None or collective.is_main):
            save_checkpoint(out / f"{case}-ckpt", learner)
            torch.save(samples, out / f"{case}-ckpt" / "samples.pt")
    return history


def main(out: Path, resume: Path | None) -> None:
    from agents.distributed.ddp import from_env

    group = from_env("cpu")
    results = {case: run_case(case, out, group) for case in CASES}
    if resume is not None:
        learner = make_learner("token", group)
        load_checkpoint(resume, learner)
        learner.step(torch.load(resume.parent / "samples.pt", weights_only=False), DISTILL)
        results["resumed"] = learner.student.trainable_state()
    torch.save(results, out / f"results-{group.rank}.pt")
    group.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
