"""The vLLM backend on a GPU: protocol, seeding, stops, scoring against transformers, weight sync.

Skipped where vllm or a CUDA GPU is absent (this CPU machine); run on a GPU machine with
``pip install -e ".[vllm,test]" && python -m pytest tests/test_lm_vllm.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("the vLLM backend needs a CUDA GPU", allow_module_level=True)

from azgym.lm import LanguageModel  # noqa: E402
from azgym.lm.hf import HFBackend  # noqa: E402
from azgym.lm.vllm import VLLMBackend, merged_weights  # noqa: E402

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def lm():
    return VLLMBackend(MODEL, gpu_memory_utilization=0.3, max_model_len=1024)


@pytest.fixture(scope="module")
def prompt(lm):
    return lm.chat_prompt([{"role": "user", "content": "What is 12 + 30?"}])


def test_protocol_seeding_and_n(lm, prompt):
    assert isinstance(lm, LanguageModel)
    a = lm.generate([prompt], n=4, max_tokens=16, seed=[3])[0]
    b = lm.generate([prompt], n=4, max_tokens=16, seed=[3])[0]
    assert [g.token_ids for g in a] == [g.token_ids for g in b] and len(a) == 4
    assert all(len(g.logprobs) == len(g.token_ids) for g in a)


def test_stop_string_kept_and_budget(lm, prompt):
    (g,) = lm.generate([prompt], max_tokens=64, stop=["\n"], temperature=0.0)[0]
    assert g.finish_reason in ("stop", "eos", "length")
    if g.finish_reason == "stop":
        assert g.text.endswith("\n")
    (short,) = lm.generate([prompt], max_tokens=3, temperature=0.0)[0]
    assert len(short.token_ids) <= 3


def test_scores_match_transformers(lm, prompt):
    hf = HFBackend.from_name(MODEL, device="cuda")
    cont = lm.encode(" 12 + 30 = 42")
    ours, ref = lm.score([prompt], [cont])[0], hf.score([prompt], [cont])[0]
    np.testing.assert_allclose(ours, ref, atol=0.1)


def test_load_weights_changes_the_served_model(lm, prompt):
    from agents.student import Student, StudentConfig

    student = Student.from_config(StudentConfig(model=MODEL, device="cuda"))
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    cont = lm.encode(" 42")
    before = lm.score([prompt], [cont])[0]
    lm.load_weights(merged_weights(student.model))
    after = lm.score([prompt], [cont])[0]
    assert not np.allclose(before, after)
