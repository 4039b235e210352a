"""A checkpoint as a plain transformers model directory that servers and ``from_pretrained`` load.

The LoRA adapters are merged into the base weights (``merge_and_unload``); a 4-bit student is rebuilt on
its full-precision base first, so the merge is exact in the base's dtype. The directory holds
``config.json``, ``model.safetensors``, ``generation_config.json`` and the tokenizer with its chat template:
``vllm serve DIR``, ``transformers serve DIR`` and ``AutoModelForCausalLM.from_pretrained(DIR)`` read it.
The value head is not part of a causal LM; it is written beside it as ``value_head.safetensors`` (servers
ignore it) and ``azgym_export.json`` records where the weights came from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from agents.student import Student
from agents.training.checkpoint import _read_meta, load_student, resolve_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_merged(
    checkpoint: str | Path, out: str | Path, *, which: str = "newest", dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Write the merged model of ``checkpoint`` (a step-N / best directory, or a run: its ``which``) to ``out``.

    Raises :class:`CheckpointError` (and ``FileExistsError`` for an existing ``out`` without ``overwrite``)
    before any model loads; ``out`` appears only complete (written under a temporary name, then renamed).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = resolve_checkpoint(checkpoint, which)
    meta = _read_meta(path)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass another directory or overwrite it (--force)")
    student = _student(path)
    model = student.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(DTYPES[dtype])
    model.config.use_cache = True
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        student.tokenizer.save_pretrained(tmp)
        head = {k: v.detach().contiguous().cpu() for k, v in student.value_head.state_dict().items()}
        save_file(head, str(tmp / "value_head.safetensors"))
        source = {
            "checkpoint": str(path.resolve()),
            "step": meta.get("step"),
            "base_model": meta["student"]["model"],
            "lora_merged": bool(meta["student"].get("lora")),
            "dtype": dtype,
        }
        (tmp / "azgym_export.json").write_text(json.dumps(source, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _student(path: Path) -> Student:
    return load_student(path, load_in_4bit=False, dtype="float32", gradient_checkpointing=False)
