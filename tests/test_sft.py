"""SFT on a tiny seeded model: the prompt is masked, steps lower the loss, resume is exact, checkpoints load."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from agents.alphazero.config import ALIASES, PRESETS, RunConfig
from agents.student import Student, StudentConfig, token_logprobs
from agents.training.checkpoint import build_student, load_student, resolve_checkpoint
from agents.warmstart.data import IGNORE_INDEX, Collator, build_examples, response_nll, split_heldout
from agents.warmstart.params import ParamsError, apply_params, read_params
from agents.warmstart.sft import SFTConfig, plan_steps, train_sft
from azgym.cli import parse_config
from azgym.prompts import solve_prompt_ids, system_prompt
from azgym.tasks import gsm8k
from azgym.tasks.base import DataError, Problem

REPO = Path(__file__).resolve().parents[1]
SYSTEM = system_prompt("gsm8k", "task")
spec = importlib.util.spec_from_file_location("sft_script", REPO / "scripts" / "sft.py")
sft_script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: it defines dataclasses
spec.loader.exec_module(sft_script)


@pytest.fixture(scope="module")
def train_problems(gsm8k_dir):
    return gsm8k.load_problems(gsm8k_dir, "train")[:24]


def tiny_student(tokenizer, tiny_dir=None, **fields) -> Student:
    from helpers import tiny_llama

    config = StudentConfig(model=str(tiny_dir or "tiny"), lora_r=4, lora_alpha=8, **fields)
    torch.manual_seed(0)
    if tiny_dir is not None:
        return Student.from_config(config)
    return Student.from_config(config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)


def examples_of(student, problems, **kwargs):
    lm = student.backend()
    return build_examples(lm, problems, system=SYSTEM, eos_token_id=lm.eos_token_id, **kwargs)[0]


def small_config(tmp_path, **fields) -> SFTConfig:
    values = dict(runs_dir=str(tmp_path), max_steps=4, eval_every=2, batch_size=4, micro_batch_size=2,
                  learning_rate=2e-2, warmup_ratio=0.0, progress=False)  # fmt: skip
    return SFTConfig(**{**values, **fields})


def test_examples_are_the_solve_prompt_then_the_solution_with_the_prompt_masked(tiny_lm, gsm8k_problems):
    problem = gsm8k_problems[0]
    (example,), dropped = build_examples(tiny_lm, [problem], system=SYSTEM, eos_token_id=tiny_lm.eos_token_id)
    prompt = solve_prompt_ids(tiny_lm, SYSTEM, problem.question)  # what env.solve_prompt and evaluate use
    assert dropped == 0 and example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    response = example["labels"][len(prompt) :]
    assert response == example["input_ids"][len(prompt) :] and response[-1] == tiny_lm.eos_token_id
    assert tiny_lm.decode(response[:-1]) == problem.solution and problem.solution.endswith(f"#### {problem.gold}")


def test_the_loss_counts_response_tokens_only(tiny_lm, gsm8k_problems):
    examples = build_examples(tiny_lm, gsm8k_problems[:2], system=SYSTEM, eos_token_id=tiny_lm.eos_token_id)[0]
    assert len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])  # padding is exercised
    batch = Collator(tiny_lm.pad_id)(examples)
    with torch.no_grad():
        out = tiny_lm.model(**batch)
    logprobs = token_logprobs(out.logits, batch["input_ids"])  # [B, T-1], the project's own log-prob kernel
    response = batch["labels"][:, 1:] != IGNORE_INDEX
    assert int(response.sum()) == sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)
    expected = -(logprobs * response).sum() / response.sum()
    everything = -(logprobs * batch["attention_mask"][:, 1:]).sum() / batch["attention_mask"][:, 1:].sum()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(response_nll(out.logits, batch["labels"])) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(everything) - float(expected)) > 1e-3  # prompt tokens would change it


def test_long_examples_are_dropped_and_annotations_can_be_stripped(tiny_lm, train_problems):
    kept, dropped = build_examples(tiny_lm, train_problems[:8], system=SYSTEM, eos_token_id=2, max_length=200)
    assert dropped > 0 and len(kept) == 8 - dropped and all(len(e["input_ids"]) <= 200 for e in kept)
    plain = build_examples(tiny_lm, train_problems[:1], system=SYSTEM, eos_token_id=2, annotations=False)[0][0]
    assert "<<" in train_problems[0].solution and "<<" not in tiny_lm.decode(plain["input_ids"])
    with pytest.raises(DataError, match="no reference solution"):
        build_examples(tiny_lm, [Problem("p", "What is 1 + 1?", "2")], system=SYSTEM, eos_token_id=2)
    assert split_heldout(train_problems, 4, 10)[1] == train_problems[-4:]
    with pytest.raises(DataError, match="heldout-size"):
        split_heldout(train_problems, len(train_problems), 0)


def test_steps_lower_the_loss_and_a_resumed_run_ends_in_the_same_state(tokenizer, train_problems, tmp_path):
    train_p, held_p = split_heldout(train_problems, 4, 8)
    whole = tiny_student(tokenizer)
    train, held = examples_of(whole, train_p), examples_of(whole, held_p)
    result = train_sft(small_config(tmp_path, run_name="whole"), whole, train, held)
    losses = [e["loss"] for e in result.evals]
    assert [e["step"] for e in result.evals] == [0, 2, 4] and result.stopped == "done"
    assert losses[-1] < losses[0] - 0.01  # held-out response loss went down

    class CtrlC(TrainerCallback):  # Ctrl-C during step 1: training stops after step 2 with a trainer checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    first = tiny_student(tokenizer)
    stopped = train_sft(small_config(tmp_path, run_name="split"), first, train, held, callbacks=[CtrlC()])
    assert (stopped.steps, stopped.stopped, stopped.checkpoint) == (2, "interrupted", None)
    assert (tmp_path / "split" / "trainer" / "checkpoint-2").is_dir()
    assert any(not torch.equal(v, whole.trainable_state()[k]) for k, v in first.trainable_state().items())
    resumed_student = tiny_student(tokenizer)
    resumed = train_sft(small_config(tmp_path, run_name="split", resume=True), resumed_student, train, held)
    assert resumed.steps == 4 and [e["step"] for e in resumed.evals] == [0, 2, 4]
    final, expected = resumed_student.trainable_state(), whole.trainable_state()
    assert all(torch.equal(final[k], expected[k]) for k in expected)  # weights, optimizer, data order, RNG
    assert [e["loss"] for e in resumed.evals] == pytest.approx(losses)


def test_the_checkpoint_loads_through_the_project_loader_and_init_from(tokenizer, tiny_dir, train_problems, tmp_path):
    student = tiny_student(tokenizer, tiny_dir)
    train_p, held_p = split_heldout(train_problems, 4, 4)
    config = small_config(tmp_path, max_steps=2, batch_size=2)
    result = train_sft(config, student, examples_of(student, train_p), examples_of(student, held_p))
    saved = student.trainable_state()
    assert result.checkpoint == tmp_path / "sft" / "checkpoints" / "step-000002"
    assert resolve_checkpoint(tmp_path / "sft", "best") == tmp_path / "sft" / "checkpoints" / "best"
    extra = torch.load(result.checkpoint / "trainer.pt", weights_only=False)["extra"]["sft"]
    assert extra["step"] == 2 and extra["prompt"] == "task"
    loaded = load_student(result.checkpoint)  # what evaluate.py --checkpoint does
    assert all(torch.equal(loaded.trainable_state()[k], v) for k, v in saved.items())
    # selfplay.py --init-from: the flag comes from StudentConfig; the checkpoint's LoRA shape wins over the flags
    run = parse_config(RunConfig, ["--model", str(tiny_dir), "--init-from", str(result.checkpoint)], presets=PRESETS,
                       default_preset="cpu", aliases=ALIASES)  # fmt: skip
    assert run.student.init_from == str(result.checkpoint) and run.student.lora_r == 32
    started = build_student(run.student)
    assert (started.config.lora_r, started.config.lora_alpha) == (4, 8)
    assert all(torch.equal(started.trainable_state()[k], v) for k, v in saved.items())
    from_run = build_student(replace(run.student, init_from=str(tmp_path / "sft")))  # a run directory: newest
    assert all(torch.equal(from_run.trainable_state()[k], v) for k, v in saved.items())


def test_full_fine_tuning_in_bf16_mixed_precision_lowers_the_loss_and_keeps_float32_weights(
    tokenizer, train_problems, tmp_path
):
    student = tiny_student(tokenizer, lora=False)
    train_p, held_p = split_heldout(train_problems, 4, 8)
    train, held = examples_of(student, train_p), examples_of(student, held_p)
    before = {k: v.clone() for k, v in student.trainable_state().items()}
    result = train_sft(small_config(tmp_path, bf16=True, learning_rate=3e-3), student, train, held)
    assert result.evals[-1]["loss"] < result.evals[0]["loss"] - 0.01
    after = student.trainable_state()
    assert all(v.dtype == torch.float32 for v in after.values())  # bf16 only inside autocast
    assert any("embed" in k and not torch.equal(before[k], after[k]) for k in after)  # every weight trains


def test_a_time_budget_sizes_the_schedule_and_stops_with_a_checkpoint(tokenizer, train_problems, tmp_path):
    student = tiny_student(tokenizer)
    train_p, held_p = split_heldout(train_problems, 4, 16)
    train, held = examples_of(student, train_p), examples_of(student, held_p)
    assert plan_steps(small_config(tmp_path, max_steps=0, epochs=2.0), student, train, held) == 8  # 2 x 16 / 4
    planned = plan_steps(small_config(tmp_path, max_steps=0, epochs=100.0, budget_min=0.02), student, train, held)
    assert 1 <= planned < 400  # 1.2 s of training affords fewer than the 400 steps of 100 epochs
    result = train_sft(small_config(tmp_path, max_steps=400, budget_min=1e-4), student, train, held)
    assert result.stopped == "budget" and result.steps < 400 and result.checkpoint is not None
    assert result.evals[-1]["step"] == result.steps  # the stopping step was evaluated


@pytest.mark.parametrize("preset", sorted(sft_script.PRESETS))
def test_presets_are_valid(preset):
    config = sft_script.PRESETS[preset]()
    assert config.sft.batch_size % config.sft.micro_batch_size == 0 and config.sft.prompt == "task"


def test_params_files_are_checked_by_name_and_value(tmp_path):
    base = sft_script.cpu_preset()
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"params": {"learning_rate": 3e-4, "batch_size": 2, "lora_r": 16}, "value": 1.2}))
    config = apply_params(base, read_params(path))
    assert (config.sft.learning_rate, config.sft.batch_size, config.sft.micro_batch_size) == (3e-4, 2, 2)
    assert config.student.lora_r == 16
    path.write_text(json.dumps({"weight_decay": 0.01}))  # a flat object works too
    assert read_params(path) == {"weight_decay": 0.01}
    for content, message in [("{not json", "not valid JSON"), ('{"learning_rat": 0.1}', "did you mean 'learning_rate'"),
                             ('{"lora_r": "big"}', "must be a number"), ("[]", "holds no parameters")]:  # fmt: skip
        path.write_text(content)
        with pytest.raises(ParamsError, match=message):
            read_params(path)
    with pytest.raises(ParamsError, match="does not exist"):
        read_params(tmp_path / "missing.json")
    with pytest.raises(ParamsError, match="learning_rate: must be > 0"):
        apply_params(base, {"learning_rate": -1.0})
    with pytest.raises(ParamsError, match="whole number"):
        apply_params(base, {"lora_r": 8.5})


def test_the_script_rejects_bad_input_in_one_line_before_loading_a_model(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"params": {"lr": 0.1}}')
    for argv, message in [(["--params", str(bad)], "unknown parameter 'lr'"),
                          (["--params", str(tmp_path / "none.json")], "does not exist"),
                          (["--data", str(tmp_path / "none.jsonl"), "--runs-dir", str(tmp_path)], "does not exist"),
                          (["--metric", "accuracy"], "--generate-size: must be >= 1")]:  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            sft_script.main(argv)
        shown = str(stop.value.code) + capsys.readouterr().err
        assert message in shown and "Traceback" not in shown
    params = tmp_path / "good.json"
    params.write_text('{"learning_rate": 0.001}')
    config = sft_script.parse(["--params", str(params), "--learning-rate", "0.01"])  # a flag wins over the file
    assert config.sft.learning_rate == 0.01
    assert sft_script.parse(["--params", str(params)]).sft.learning_rate == 0.001


def test_the_script_trains_writes_a_checkpoint_and_refuses_a_changed_resume(tiny_dir, gsm8k_dir, tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "sft.py"), "--model", str(tiny_dir), "--data", str(gsm8k_dir),
            "--runs-dir", str(tmp_path), "--train-size", "8", "--heldout-size", "4", "--max-steps", "2", "--eval-every",
            "2", "--batch-size", "4", "--micro-batch-size", "2", "--lora-r", "4", "--no-progress"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sft" / "checkpoints" / "step-000002" / "meta.json").is_file()
    assert "--init-from" in done.stdout and "--prompt task" in done.stdout and "loss" in done.stdout
    again = subprocess.run([*args, "--resume", "--batch-size", "2"], capture_output=True, text=True, timeout=300,
                           cwd=REPO)  # fmt: skip
    assert again.returncode != 0 and "--batch-size: was 4, now 2" in again.stderr
