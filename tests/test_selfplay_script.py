"""scripts/selfplay.py end to end on a tiny model: run directory, TensorBoard, resume, SIGKILL, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import tiny_llama, torchrun

REPO = Path(__file__).resolve().parents[1]
TINY = ["--selfplay", "moves", "--iterations", "1", "--num-examples", "2", "--group-size", "2", "--simulations", "2",
        "--train-steps", "1",
        "--eval-size", "2", "--eval-max-tokens", "8", "--chunk-tokens", "4", "--max-depth", "2", "--max-tokens", "8",
        "--no-progress"]  # fmt: skip


def selfplay(args, runs, **kwargs):
    cmd = [sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(runs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, **kwargs)


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_one_iteration_then_resume(tiny_dir, tmp_path):
    import torch

    first = selfplay(["--model", str(tiny_dir), "--run-name", "smoke", *TINY], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "smoke"
    assert {"charts/return", "charts/accuracy", "losses/loss", "losses/policy", "losses/kl", "losses/value_loss",
            "losses/grad_norm", "eval/accuracy", "eval/format_accuracy", "mcts/tree_size", "mcts/simulations_per_s",
            "perf/generated_tokens_per_s"} <= scalar_tags(run)  # fmt: skip
    assert (run / "checkpoints" / "step-000001" / "meta.json").is_file()
    assert (run / "replay" / "iter-000000.jsonl").is_file()
    config = json.loads((run / "config.json").read_text())  # the resolved values that ran, no placeholders
    assert config["student"]["model"] == str(tiny_dir)
    assert (config["search"]["num_simulations"], config["env"]["max_steps"], config["env"]["max_tokens"]) == (2, 2, 8)
    assert json.loads((run / "eval-base.json").read_text())["num_problems"] == 2
    # keep-best: the first trained evaluation is the best so far; the run ends with its before/after table
    best = torch.load(run / "checkpoints" / "best" / "trainer.pt", weights_only=False)["extra"]
    assert best["best_accuracy"] == json.loads((run / "eval-iter-0000.json").read_text())["accuracy"]
    assert "accuracy (95% CI)" in first.stdout and "after 1 steps" in first.stdout and "tensorboard" in first.stdout

    longer = list(TINY)
    longer[longer.index("--iterations") + 1] = "2"
    again = selfplay(["--model", str(tiny_dir), "--run-name", "smoke", "--resume", *longer], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing at iteration 1" in again.stderr
    assert (run / "replay" / "iter-000001.jsonl").is_file()
    assert (run / "checkpoints" / "step-000002" / "meta.json").is_file()

    # a corrupt newest checkpoint: --resume moves it aside and continues from the one before
    (run / "checkpoints" / "step-000002" / "trainable.safetensors").write_bytes(b"not a safetensors file")
    longer[longer.index("--iterations") + 1] = "3"
    healed = selfplay(["--model", str(tiny_dir), "--run-name", "smoke", "--resume", *longer], tmp_path)
    assert healed.returncode == 0, healed.stderr[-3000:]
    assert "moved it aside to" in healed.stderr and "continuing at iteration 1" in healed.stderr
    assert (run / "checkpoints" / "step-000002.corrupt").is_dir()
    assert (run / "checkpoints" / "step-000003" / "meta.json").is_file()

    clash = selfplay(["--model", str(tiny_dir), "--run-name", "smoke", *TINY], tmp_path)
    assert clash.returncode != 0 and "--resume" in clash.stderr

    for which, step in (("best", None), ("newest", "step-000003")):
        cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint", str(run), "--which", which,
               "--size", "2", "--max-tokens", "4", "--out", str(tmp_path / f"{which}.json")]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"checkpoint {run / 'checkpoints' / (step or 'best')}" in result.stdout
    missing = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint", str(tmp_path),
                              "--which", "best"], capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert missing.returncode != 0 and "no best checkpoint under" in missing.stderr.strip().splitlines()[-1]


def test_sigkill_during_training_loses_no_finished_iteration(tiny_dir, tmp_path):
    args = ["--model", str(tiny_dir), "--run-name", "killed", *TINY]
    args[args.index("--iterations") + 1] = "3"
    args[args.index("--train-steps") + 1] = "40"  # long enough training to be killed in the middle of it
    cmd = [sys.executable, str(REPO / "scripts" / "selfplay.py"), "--runs-dir", str(tmp_path), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "killed"
    deadline = time.time() + 300
    # the first iteration is finished (checkpoint) and the second one's self-play is on disk: it is training
    while not ((run / "checkpoints" / "step-000040").exists() and (run / "replay" / "iter-000001.jsonl").exists()):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the run never reached its second iteration"
        time.sleep(0.2)
    first_shard = (run / "replay" / "iter-000000.jsonl").read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step-000080").exists()

    args[args.index("--iterations") + 1] = "2"
    resumed = selfplay([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at iteration 1" in resumed.stderr
    assert "reusing its replay shard" in resumed.stderr  # iteration 1's self-play was not lost either
    assert (run / "replay" / "iter-000000.jsonl").read_text() == first_shard
    assert (run / "checkpoints" / "step-000080" / "meta.json").is_file()


def test_bad_flags_are_named_in_one_line_before_any_model_loads(tmp_path):
    cases = {
        ("--task", "chess"): "argument --task: invalid choice: 'chess'",
        ("--group-size", "1"): "--group-size: must be >= 2 for GRPO",
        ("--learning-rate", "nan"): "--learning-rate: must be a finite number, got nan",
        ("--simulations", "-3"): "--simulations: must be >= 1, got -3",
    }
    for args, message in cases.items():
        result = selfplay([*args, "--model", "no-such-model"], tmp_path)  # a model load would fail differently
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()[-1]) < 200
    env = {**os.environ, "NUM_MCTS_ITERATIONS": "-3"}
    result = selfplay(["--model", "no-such-model"], tmp_path, env=env)
    assert result.returncode == 2 and "NUM_MCTS_ITERATIONS=-3 (sets --simulations): must be >= 1" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_projects_errors_end_in_one_line_and_exit_code_2(tiny_dir, tmp_path):
    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text('{"question": "What is 2 + 2?", "answer": "#### 4"}\n{"question": "no answer"}\n')
    cases = [
        (["--task", "gsm8k", "--data", str(tmp_path / "nowhere")], "nowhere"),
        (["--task", "gsm8k", "--data", str(bad_row)], "bad.jsonl"),
        (["--selfplay", "tree", "--simulations", "1"], "must be >= 2 under --selfplay tree"),
        (["--model", str(tmp_path / "no-model")], "unknown model"),
    ]
    for i, (flags, named) in enumerate(cases):
        result = selfplay(["--model", str(tiny_dir), "--run-name", f"bad-{i}", *TINY, *flags], tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and lines[-1].startswith("selfplay.py: error:") and named in lines[-1]


def test_two_teacher_ensemble_and_the_similarity_agent(tiny_dir, tmp_path, tokenizer):
    other = tmp_path / "other-model"
    tiny_llama(len(tokenizer), seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    teachers = f"{tiny_dir},{other}"
    ensemble = selfplay(["--model", str(tiny_dir), "--run-name", "ens", "--teachers", teachers, *TINY], tmp_path)
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    run = tmp_path / "ens"
    assert {f"teachers/weight/{tiny_dir}", f"teachers/weight/{other}"} <= scalar_tags(run)
    import torch

    saved = torch.load(run / "checkpoints" / "step-000001" / "trainer.pt", weights_only=False)["extra"]["teachers"]
    assert set(saved["values"]) == {str(tiny_dir), str(other)} and not saved["dropped"]

    similar = selfplay(["--model", str(tiny_dir), "--run-name", "sim", "--agent", "similarity", *TINY], tmp_path)
    assert similar.returncode == 0, similar.stderr[-3000:]
    assert (tmp_path / "sim" / "replay" / "iter-000000.jsonl").is_file()


def test_two_torchrun_processes_then_resumed_in_one(tiny_dir, tmp_path):
    script, args = REPO / "scripts" / "selfplay.py", ["--model", str(tiny_dir), *TINY]
    shared = torchrun(2, script, "--runs-dir", str(tmp_path), "--run-name", "ddp", *args)
    assert shared.returncode == 0, shared.stderr[-3000:]
    run = tmp_path / "ddp"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1 and shared.stdout.count("accuracy (95% CI)") == 1
    episodes = (run / "replay" / "iter-000000.jsonl").read_text().splitlines()
    assert len(episodes) == 4 and len({json.loads(e)["problem_id"] for e in episodes}) == 2  # both processes' plays
    assert (run / "checkpoints" / "step-000001" / "meta.json").is_file()

    longer = list(args)
    longer[longer.index("--iterations") + 1] = "2"
    alone = selfplay(["--run-name", "ddp", "--resume", *longer], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "continuing at iteration 1" in alone.stderr and (run / "checkpoints" / "step-000002").is_dir()

    too_many = torchrun(3, script, "--runs-dir", str(tmp_path), "--run-name", "three", *args)  # 2 problems, 3 processes
    assert too_many.returncode != 0 and not (tmp_path / "three").exists()
    assert (too_many.stderr + too_many.stdout).count("--num-examples 2 is fewer than the 3 processes") == 1
