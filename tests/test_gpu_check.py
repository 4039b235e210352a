"""The GPU check runs here with --device cpu, the same steps, so that it cannot rot before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess

from helpers import REPO


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert report["device"] == "cpu" and "every step ok" in done.stdout
    generate = report["generate"]
    assert generate["seeded_samples_repeat"] and generate["score_vs_sample_logprob_max_abs"] < 2e-3
    assert generate["greedy_tokens_equal_to_cpu"] == 1.0  # the same device: the same tokens
    assert report["learner"]["float32"]["adapters_changed"] and report["learner"]["bfloat16"]["adapters_changed"]
    assert report["selfplay"]["exit_code"] == 0 and report["search"]["simulations_per_s"] > 0
    assert (tmp_path / "pytest_gpu.txt").is_file()
