"""scripts/export.py: a trained checkpoint of the tiny model, merged and written as a plain transformers
directory, loads back with from_pretrained and answers greedily as the in-process student did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agents.student import Student, StudentConfig
from agents.training.checkpoint import CheckpointError, save_checkpoint
from agents.training.export import export_merged
from agents.training.learner import Learner
from azgym.lm import HFBackend

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more.", "Solve: 7 * 6 =", "#### "]


@pytest.fixture(scope="module")
def trained_run(tiny_dir, tmp_path_factory):
    """A run directory whose newest checkpoint holds LoRA adapters far from zero (so the merge matters)."""
    torch.manual_seed(0)
    student = Student.from_config(StudentConfig(model=str(tiny_dir), lora_r=4))
    with torch.no_grad():
        for name, param in student.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoints", Learner(student))
    return run, student


def greedy(lm, prompts) -> list[tuple[int, ...]]:
    return [out[0].token_ids for out in lm.generate(prompts, max_tokens=12, temperature=0.0)]


def test_exported_directory_loads_back_and_answers_as_the_student(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, student = trained_run
    out = export_merged(run, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "value_head.safetensors"} <= names
    assert not any("lora" in key for key in load_file(str(out / "model.safetensors")))
    assert json.loads((out / "azgym_export.json").read_text())["lora_merged"] is True

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == student.tokenizer.chat_template
    exported = greedy(HFBackend(model, tokenizer, name="exported"), PROMPTS)
    assert exported == greedy(student.backend(precision="float32"), PROMPTS)  # the export is float32
    base = AutoModelForCausalLM.from_pretrained(student.config.model, dtype=torch.float32).eval()
    assert exported != greedy(HFBackend(base, tokenizer, name="base"), PROMPTS), "the adapters changed nothing"


def test_bad_checkpoints_and_an_existing_out_fail_in_one_line_before_loading(trained_run, tmp_path):
    run, _ = trained_run
    with pytest.raises(CheckpointError, match="no best checkpoint under"):
        export_merged(run, tmp_path / "x", which="best")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="exists; pass another directory or overwrite it"):
        export_merged(run, tmp_path / "taken")
    cmd = [sys.executable, str(REPO / "scripts" / "export.py"), str(tmp_path / "nowhere"), str(tmp_path / "y")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("export.py: error: no newest checkpoint under") and not (tmp_path / "y").exists()
