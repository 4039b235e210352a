"""scripts/bench_countdown.py: each learner's flags make the run it names, the report, bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.alphazero.config import PRESETS, RunConfig, countdown_preset, cpu_preset
from azgym.cli import parse_config

REPO = Path(__file__).resolve().parents[1]
from azgym_bench import countdown as bench  # noqa: E402


def config_of(name: str) -> RunConfig:
    return parse_config(RunConfig, bench.learner_flags(name), presets=PRESETS, default_preset="cpu")


def test_apo_is_the_countdown_preset_and_search_swaps_in_azgyms_own_learner():
    apo, search, ablation, adaptive = (config_of(n) for n in bench.LEARNERS)
    assert apo == countdown_preset()
    assert search.learner == cpu_preset().learner != countdown_preset().learner  # GRPO + value head, not A*PO
    assert (search.search.num_simulations, ablation.search.num_simulations) == (4, 1)
    assert (search.env.num_right, search.env.num_wrong) == (2, 1)
    assert search.env == ablation.env and search.env.task == "countdown" and search.env.rewards == "partial"
    assert search.loop == countdown_preset().loop  # same problems per iteration, same temperature schedule
    assert (adaptive.loop.selfplay, adaptive.loop.dynamic_sampling) == ("adaptive", True)
    assert adaptive.env == search.env and adaptive.learner == search.learner


def test_the_report_averages_seeds_and_ends_with_search_minus_its_ablation(tmp_path, capsys):
    for name, finals in (("search", (0.10, 0.20)), ("simulations_1", (0.05, 0.05))):
        for seed, final in enumerate(finals):
            (tmp_path / name).mkdir(exist_ok=True)
            result = {"seed": seed, "final": final, "final_partial": 0.5, "best": final, "learner_steps": 9,
                      "generated_tokens": 900, "wall_s": 1500.0, "curve": []}  # fmt: skip
            (tmp_path / name / f"seed-{seed}.json").write_text(json.dumps(result))
    settings = {"level": "3", "budget_min": 25, "eval_size": 200}
    summary = bench.report(tmp_path, {"accuracy": 0.0, "partial_credit": 0.2}, settings, "abc")
    assert summary["learners"]["search"]["final"] == [0.10, 0.20] and "apo" not in summary["learners"]
    bench.print_report(summary)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "search minus no search (--simulations 1), mean final exact accuracy: +0.100"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learners", "ppo"], "--learners: unknown ppo"),
        (["--level", "7"], "--level: unknown countdown level '7'"),
        (["--budget-min", "0"], "must be positive"),
    ],
)
def test_bad_flags_end_in_one_line_before_any_run(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        bench.main([*argv, "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_run_result_holds_its_evaluated_points_and_is_json(tmp_path, monkeypatch):
    class Args:
        budget_min, eval_points, level, train_size, iterations, selfplay_args = 25.0, 2, "3", 10, 30, ""

    points = [{"path": str(tmp_path / f"step-{i}"), "minutes": 12.0 * i, "learner_steps": 4 * i,
               "generated_tokens": 100 * i, "load": lambda: None} for i in (1, 2)]  # fmt: skip
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 0})())
    monkeypatch.setattr(bench, "azgym_points", lambda run_dir, args: points)
    monkeypatch.setattr(bench, "prune_checkpoints", lambda run_dir, keep: None)
    trainer = bench.Trainer(Args())
    monkeypatch.setattr(trainer, "evaluate", lambda load: {"accuracy": 0.1, "partial_credit": 0.3})
    result = trainer("apo", 0, tmp_path / "seed-0")
    assert json.loads(json.dumps(result))["curve"][1] == {"path": str(tmp_path / "step-2"), "minutes": 24.0,
                                                         "learner_steps": 8, "generated_tokens": 200,
                                                         "accuracy": 0.1, "partial_credit": 0.3}  # fmt: skip
    assert (result["final"], result["final_partial"], result["learner_steps"]) == (0.1, 0.3, 8)


def test_results_made_under_another_prompt_are_refused_before_any_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    settings = {"budget_min": 25.0, "level": "3", "train_size": 2000, "eval_size": 200, "eval_points": 3,
                "iterations": 30, "max_tokens": 96, "selfplay_args": "", "prompt": "task"}  # fmt: skip
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match="holds results made with other settings"):
        bench.main(["--out-dir", str(out)])
    assert bench.eval_prompt() == countdown_preset().env.prompt == "example"
    assert not (out / "base.json").exists()
