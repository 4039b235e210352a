from __future__ import annotations

from pathlib import Path

import pytest

from helpers import tiny_llama

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.fail(f"GSM8K not found at {GSM8K_DIR}: the tests read it from ../shared/data/gsm8k beside the repo")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def gsm8k_problems(gsm8k_dir):
    from azgym.tasks import gsm8k

    return gsm8k.load_problems(gsm8k_dir, "test")[:16]


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (converted from the packaged GGUF once, then cached)."""
    from transformers import AutoTokenizer

    from azgym.lm.registry import DEFAULT_MODEL, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny seeded Llama saved as a model directory (for scripts run with ``--model DIR``)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    from azgym.lm import HFBackend

    return HFBackend(tiny_llama(len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray instance on 2 CPUs, shared by the Ray tests (they skip where Ray is not installed)."""
    import logging

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
