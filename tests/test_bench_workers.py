"""scripts/bench_workers.py on the tiny model with a tiny budget: every mode plays the in-process episodes, the
figures are written, the ratio comes last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
from azgym_bench import workers as bench  # noqa: E402

TINY = ["--problems", "2", "--group-size", "2", "--warmup-problems", "0", "--simulations", "2", "--chunk-tokens", "4",
        "--max-steps", "2", "--max-tokens", "8"]  # fmt: skip


def test_two_workers_against_in_process(local_ray, tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench_workers.json"
    bench.main(["--model", str(tiny_dir), *TINY, "--workers", "2", "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ratio 2 workers / in process self-play episodes/s: ")
    saved = json.loads(out.read_text())
    assert set(saved["modes"]) == {"in process", "2 workers"}
    assert all(m["same_episodes"] and m["episodes"] == 4 and m["tokens_per_s"] > 0 for m in saved["modes"].values())
    assert saved["modes"]["2 workers"]["startup_s"] > 0 and saved["ratio_of"] == "2 workers / in process episodes/s"


def test_bad_worker_counts_are_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--workers", "0,two"])
    assert "--workers: must be a comma-separated list of counts >= 1" in capsys.readouterr().err
