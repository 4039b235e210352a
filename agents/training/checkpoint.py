"""Checkpoints of a learner: trainable weights, optimizer, scheduler, counters and RNG states.

A checkpoint is a directory ``<root>/step-000123/`` (or ``<root>/best/``) holding
``trainable.safetensors`` (LoRA adapters or all weights, and the value head), ``trainer.pt``
(optimizer, scheduler, step count, RNG states, the caller's extra state: no sample caches, the behaviour
and reference log-probs live with the episodes in the replay) and ``meta.json`` (the student and learner
configs). It is written under a
temporary name and renamed into place, ``meta.json`` last, so a crash mid-write never leaves a
directory that :func:`latest_checkpoint` would pick.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Collection
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agents.student import Student, StudentConfig
from agents.training.learner import Learner
from azgym.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
# settings that change the shapes or meaning of the saved weights
_MUST_MATCH = ("model", "lora", "lora_r", "lora_targets", "load_in_4bit")
# the student settings ``init_from`` takes from its checkpoint: what shapes (or scales) the trained weights
INIT_SETTINGS = ("model", "lora", "lora_r", "lora_alpha", "lora_targets")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the current student."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read (a crash mid-copy, a disk error): resume moves it aside."""


def save_checkpoint(
    root: str | Path, learner: Learner, extra: dict[str, Any] | None = None, *, name: str | None = None
) -> Path:
    """Write ``root/step-<N>`` for the learner's current step (or ``root/<name>``, e.g. ``best``) and return it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / (name or f"step-{learner.step_count:06d}")
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.contiguous().cpu() for k, v in learner.student.trainable_state().items()}
    save_file(state, str(tmp / "trainable.safetensors"))
    torch.save(
        {
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": learner.scheduler.state_dict(),
            "step": learner.step_count,
            "rng": _rng_state(),
            "extra": extra or {},
        },
        tmp / "trainer.pt",
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "step": learner.step_count,
        "student": asdict(learner.student.config),
        "learner": asdict(learner.config),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def load_checkpoint(path: str | Path, learner: Learner) -> dict[str, Any]:
    """Restore ``learner`` (weights, optimizer, scheduler, step, RNG) from ``path``; return its extra state."""
    path = Path(path)
    meta = _read_meta(path)
    saved, current = meta.get("student", {}), asdict(learner.student.config)
    mismatched = [k for k in _MUST_MATCH if _normal(saved.get(k)) != _normal(current.get(k))]
    if mismatched:
        details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in mismatched)
        raise CheckpointError(
            f"checkpoint {path} was made for another student ({details}); resume with the same settings"
        )
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - safetensors and pickle raise many types
        raise CorruptCheckpointError(_unreadable(path, err)) from err
    try:
        learner.student.load_trainable_state(weights)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path} does not fit this student: {err}") from err
    learner.optimizer.load_state_dict(trainer["optimizer"])
    learner.scheduler.load_state_dict(trainer["scheduler"])
    learner.step_count = int(trainer["step"])
    _set_rng_state(trainer["rng"])
    learner.student.refresh_reference()
    return trainer.get("extra", {})


def build_student(config: StudentConfig, **kwargs) -> Student:
    """:meth:`Student.from_config`, and with ``config.init_from`` that checkpoint's trained weights loaded
    (its model and LoRA shape win: :func:`init_weights`). ``kwargs`` go to ``from_config``."""
    if not config.init_from:
        return Student.from_config(config, **kwargs)
    weights, config = init_weights(config)
    student = Student.from_config(replace(config, init_from=""), **kwargs)
    student.config = config  # saved with later checkpoints: where the weights came from
    student.load_trainable_state(weights)
    student.refresh_reference()  # full fine-tuning: the loaded weights are the KL reference
    return student


def load_student(path: str | Path, device: str = "cpu", **overrides) -> Student:
    """The student a checkpoint was saved from, with its trained weights; ``overrides`` replace saved settings
    (e.g. ``load_in_4bit=False``). Raises :class:`CheckpointError` before any model loads."""
    path = Path(path)
    meta = _read_meta(path)
    weights = _trained_weights(path)
    fields = dict(meta["student"], device=device, init_from="") | overrides  # the trained weights are all here
    fields["lora_targets"] = tuple(fields.get("lora_targets", ()))
    student = Student.from_config(StudentConfig(**fields))
    student.load_trainable_state(weights)
    return student


def init_weights(config: StudentConfig) -> tuple[dict[str, torch.Tensor], StudentConfig]:
    """The trained weights ``config.init_from`` names and the student config that fits them.

    ``init_from`` is a checkpoint directory, or a run directory / checkpoints folder (its newest checkpoint,
    as ``evaluate.py --checkpoint`` picks). The checkpoint's :data:`INIT_SETTINGS` replace ``config``'s (logged
    when they differ), so an adapter of another rank loads as saved. Raises :class:`CheckpointError` before
    any model loads.
    """
    try:
        path = resolve_checkpoint(config.init_from, "newest")
    except CheckpointError:
        raise CheckpointError(
            f"init_from {config.init_from}: no checkpoint there; pass a step-N or best directory, or a run "
            "directory written by selfplay.py or sft.py"
        ) from None
    saved = _read_meta(path).get("student", {})
    changes = {k: saved[k] for k in INIT_SETTINGS if k in saved and _normal(saved[k]) != _normal(getattr(config, k))}
    if "lora_targets" in changes:
        changes["lora_targets"] = tuple(changes["lora_targets"])
    if changes:
        logger.info(
            "init_from %s: taking %s from the checkpoint", path, ", ".join(f"{k}={v!r}" for k, v in changes.items())
        )
    weights = _trained_weights(path)
    return weights, replace(config, **changes)


def latest_checkpoint(root: str | Path, exclude: Collection[Path] = ()) -> Path | None:
    """The complete checkpoint with the highest step under ``root`` (none of ``exclude``), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child not in exclude and (child / "meta.json").is_file():
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None


CHECKPOINT_CHOICES = ("newest", "best")


def resolve_checkpoint(path: str | Path, which: str = "newest") -> Path:
    """A checkpoint directory from what a user passes: a checkpoint itself (``step-N`` or ``best``), a
    checkpoints folder, or a run directory (``runs/NAME``); ``which`` picks the newest or the best one.
    """
    path = Path(path)
    if which not in CHECKPOINT_CHOICES:
        raise CheckpointError(f"which must be one of {', '.join(CHECKPOINT_CHOICES)}, got {which!r}")
    if (path / "meta.json").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = root / "best" if which == "best" else latest_checkpoint(root)
    if found is None or not (found / "meta.json").is_file():
        raise CheckpointError(
            f"no {which} checkpoint under {path}: pass a step-N or best directory, a checkpoints folder or a run "
            f"directory{' (a best checkpoint is kept once the run has evaluated)' if which == 'best' else ''}"
        )
    return found


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a step-N directory written by save_checkpoint")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(_unreadable(path, err)) from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version')}, this azgym reads {FORMAT_VERSION}"
        )
    return meta


def _trained_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's ``trainable.safetensors``, or :class:`CorruptCheckpointError` naming what to do."""
    try:
        return load_file(str(path / "trainable.safetensors"))
    except Exception as err:  # noqa: BLE001 - safetensors raises many types
        raise CorruptCheckpointError(_unreadable(path, err)) from err


def _unreadable(path: Path, err: Exception) -> str:
    earlier = sorted(p.name for p in path.parent.glob("step-*") if p != path and _STEP_DIR.match(p.name))
    hint = f"--resume moves it aside and continues from {earlier[-1]}" if earlier else "delete it to start fresh"
    return f"checkpoint {path} is corrupt or incomplete ({type(err).__name__}: {err}); {hint}"


def move_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint to ``<name>.corrupt`` (``.corrupt-2``, ... if taken), as replay shards are."""
    aside = path.with_name(path.name + ".corrupt")
    count = 1
    while aside.exists():
        count += 1
        aside = path.with_name(f"{path.name}.corrupt-{count}")
    os.rename(path, aside)
    return aside


def _normal(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
