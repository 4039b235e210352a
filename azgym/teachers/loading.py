"""Teachers by name: the tiers of teacher models and their loading.

A name is a tier (``local``, ``free``, ``production``), a model (a known short name, a local directory or
a Hub id: loaded in this process) or a served model ``URL#MODEL`` (an OpenAI-compatible server, e.g.
``http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct``: :class:`~azgym.lm.served.OpenAIBackend`). They mix:
``"http://gpu-box:8000/v1#Qwen/Qwen2.5-7B-Instruct,smollm2-135m-instruct"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from azgym.lm.base import LanguageModel
from azgym.lm.hf import shared_backend
from azgym.lm.served import OpenAIBackend, is_served, parse_served
from azgym.teachers.records import Teacher

logger = logging.getLogger(__name__)

# Tiers of teacher models. ``local`` runs on a laptop CPU from PyPI packages; ``free`` and
# ``production`` are open-weight Hub models for a GPU (vLLM or transformers).
TIERS: dict[str, tuple[str, ...]] = {
    "local": ("smollm2-135m-instruct", "gemma3-270m"),
    "free": ("Qwen/Qwen2.5-1.5B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "google/gemma-3-1b-it"),
    "production": (
        "Qwen/Qwen2.5-7B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "google/gemma-3-12b-it",
    ),
}


def load_teachers(
    names: str | Sequence[str],
    scorer: LanguageModel,
    *,
    device: str = "cpu",
    backend: str = "hf",
    gpu_memory_utilization: float = 0.2,
    loader: Callable[[str], LanguageModel] | None = None,
) -> list[Teacher]:
    """Teachers from a tier name (``local``, ``free``, ``production``), a comma-separated string
    or a list of model names. The scorer is reused where its name appears; a model that fails to
    load is skipped with a warning naming it (an error if none loads). ``backend="vllm"`` serves
    each teacher with vLLM, taking ``gpu_memory_utilization`` of the GPU each; ``loader`` replaces
    the transformers loading (the environment passes one that shares models between envs)."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown backend {backend!r}; use 'hf' (transformers) or 'vllm'")

    names = teacher_names(names)
    teachers, failures = [], []
    for name in names:
        if name == scorer.name:
            teachers.append(Teacher(scorer, name))
            continue
        try:
            if is_served(name):
                lm = OpenAIBackend.from_spec(name)
            elif backend == "vllm":
                from azgym.lm.vllm import VLLMBackend

                lm = VLLMBackend(name, gpu_memory_utilization=gpu_memory_utilization)
            else:
                lm = loader(name) if loader else shared_backend(name, device)
        except Exception as err:  # noqa: BLE001 - one teacher that cannot load must not stop the others
            logger.warning(
                "teacher %s could not be loaded (%s: %s); continuing without it", name, type(err).__name__, err
            )
            failures.append(f"{name}: {err}")
            continue
        has_template = bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))
        teachers.append(Teacher(lm, name, "chat" if has_template else "few_shot"))
    if not teachers:
        raise RuntimeError(f"no teacher could be loaded: {'; '.join(failures)}")
    return teachers


def teacher_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """The model names of a tier or a comma-separated list; a served name's URL is checked here (one-line error).

    >>> teacher_names("http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct, smollm2-135m-instruct")
    ('http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct', 'smollm2-135m-instruct')
    """
    if isinstance(names, str):
        names = TIERS.get(names, tuple(n.strip() for n in names.split(",") if n.strip()))
    for name in names:
        if is_served(name):
            parse_served(name)
    return tuple(names)
