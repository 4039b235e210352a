"""scripts/bench_learning.py's bookkeeping: resumption per (learner, seed), and the multi-seed report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
from azgym_bench import common  # noqa: E402
from azgym_bench import learning as bench  # noqa: E402


def fake_result(final, best, steps=10, tokens=1000):
    return {"final": final, "best": best, "learner_steps": steps, "generated_tokens": tokens, "wall_s": 600.0,
            "curve": [{"minutes": 5.0, "accuracy": best}, {"minutes": 10.0, "accuracy": final}]}  # fmt: skip


def test_a_result_on_disk_is_not_run_again_and_a_cut_off_run_starts_afresh(tmp_path):
    calls = []

    def train_one(name, seed, run_dir):
        calls.append((name, seed))
        assert not any(run_dir.iterdir()), "a cut-off run's files must be gone before it starts again"
        (run_dir / "log").write_text("trained")
        return fake_result(0.5, 0.6)

    (tmp_path / "azgym").mkdir()
    (tmp_path / "azgym" / "seed-0.json").write_text(json.dumps(dict(fake_result(0.1, 0.2), learner="azgym", seed=0)))
    stale = tmp_path / "azgym" / "seed-1"  # cut off: a run directory without its result
    stale.mkdir()
    (stale / "half-written").write_text("x")
    (tmp_path / "trl").mkdir()
    (tmp_path / "trl" / "seed-0.json.tmp").write_text("{")  # a cut-off write is not a result

    assert common.pending(tmp_path, ["azgym", "trl"], [0, 1]) == [("azgym", 1), ("trl", 0), ("trl", 1)]
    ran = common.run_all(tmp_path, ["azgym", "trl"], [0, 1], train_one)
    assert calls == ran == [("azgym", 1), ("trl", 0), ("trl", 1)]
    assert json.loads((tmp_path / "azgym" / "seed-0.json").read_text())["final"] == 0.1  # untouched
    assert not (stale / "half-written").exists()
    assert json.loads((tmp_path / "trl" / "seed-1.json").read_text())["seed"] == 1

    calls.clear()
    assert common.run_all(tmp_path, ["azgym", "trl"], [0, 1], train_one) == [] and calls == []


def test_report_means_spread_collapse_and_the_better_baseline(tmp_path, capsys):
    results = {
        "azgym": [(0.30, 0.32), (0.40, 0.41), (0.20, 0.45)],  # seed 2: 0.20 < 0.45 / 2 -> collapsed
        "trl": [(0.10, 0.30), (0.12, 0.20), (0.14, 0.15)],
        "trl_azgym_lr": [(0.20, 0.20), (0.22, 0.22), (0.18, 0.25)],
    }
    for name, pairs in results.items():
        (tmp_path / name).mkdir()
        for seed, (final, best) in enumerate(pairs):
            path = tmp_path / name / f"seed-{seed}.json"
            path.write_text(json.dumps(dict(fake_result(final, best), learner=name, seed=seed)))
    summary = bench.report(tmp_path, {"level": "add2", "accuracy": 0.10}, 10.0, "abc123")
    azgym = summary["learners"]["azgym"]
    assert azgym["seeds"] == [0, 1, 2] and azgym["final"] == [0.30, 0.40, 0.20]
    assert azgym["collapsed"] == [False, False, True]
    assert summary["baseline"] == "trl_azgym_lr"  # mean final 0.20 beats trl's 0.12
    assert common.mean_std(azgym["final"]) == pytest.approx((0.30, 0.10))
    bench.print_report(summary)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # (0.30 - 0.10) / (0.20 - 0.10) = 2.00, printed last
    assert last.startswith("gain ratio azgym/trl_azgym_lr") and last.endswith("2.00")
    json.dumps(summary)  # the docs/bench_learning.json shape is plain JSON


def test_accuracy_at_matched_tokens_is_read_off_every_curve_between_its_points(tmp_path):
    curve = [{"generated_tokens": 1000, "accuracy": 0.30}, {"generated_tokens": 3000, "accuracy": 0.50}]
    assert bench.accuracy_at_tokens(curve, 2000, base=0.10) == pytest.approx(0.40)
    assert bench.accuracy_at_tokens(curve, 500, base=0.10) == pytest.approx(0.20)  # from the base at 0 tokens
    assert bench.accuracy_at_tokens(curve, 3001, base=0.10) is None  # never reached
    assert bench.accuracy_at_tokens([{"accuracy": 0.3}], 10, base=0.1) is None  # no token counts
    for name, tokens in (("azgym", 3000), ("azgym_simulations_1", 6000)):
        (tmp_path / name).mkdir()
        result = dict(fake_result(0.5, 0.5, tokens=tokens), learner=name, seed=0)
        result["curve"] = [{"minutes": 5.0, "generated_tokens": tokens // 3, "accuracy": 0.3},
                           {"minutes": 10.0, "generated_tokens": tokens, "accuracy": 0.5}]  # fmt: skip
        (tmp_path / name / "seed-0.json").write_text(json.dumps(result))
    summary = bench.report(tmp_path, {"level": "add2", "accuracy": 0.10}, 10.0, "abc123")
    assert summary["matched_tokens"] == 3000  # the fewest any run generated
    assert summary["learners"]["azgym"]["at_matched_tokens"] == [pytest.approx(0.5)]
    assert summary["learners"]["azgym_simulations_1"]["at_matched_tokens"] == [
        pytest.approx(0.35)
    ]  # a quarter of 2000 -> 6000


def test_bad_flags_fail_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="unknown nope"):
        bench.main(["--learners", "azgym,nope", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--seeds"):
        bench.main(["--seeds", "x", "--out-dir", str(tmp_path)])
    (tmp_path / "settings.json").write_text(json.dumps({"budget_min": 99}))
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["--learners", "azgym", "--out-dir", str(tmp_path)])


def test_replay_choices_counts_what_the_agent_played(tmp_path, capsys):
    from azgym_bench import replay_choices

    def episode(action, solved, visits, problem="p1"):
        step = {"labels": ["right", "right", "wrong"], "priors": [0.6, 0.3, 0.1], "visits": visits, "action": action}
        return json.dumps({"problem_id": problem, "episode_return": 1.0 if solved else -1.0, "solved": solved,
                           "truncated": False, "steps": [step]})  # fmt: skip

    shard = tmp_path / "searched" / "seed-0" / "replay" / "iter-000001.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text(episode(2, False, [1, 1, 2]) + "\n" + episode(0, True, [4, 0, 0]) + "\n")
    # the same problem in the next shard is another group: its two returns are equal
    shard.with_name("iter-000002.jsonl").write_text(episode(0, True, [4, 0, 0]) + "\n" + episode(0, True, [4, 0, 0]))
    c = replay_choices.choices([tmp_path / "searched" / "seed-0"])
    assert (c["episodes"], c["solved"], c["played_wrong"], c["played_prior_argmax"]) == (4, 0.75, 0.25, 0.75)
    assert c["equal_groups"] == 0.5
    assert c["prior_on_wrong"] == pytest.approx(0.1) and c["visit_entropy"] == pytest.approx(0.25 * 1.5 * 0.6309, 1e-3)
    replay_choices.main(["--out-dir", str(tmp_path), "searched"])
    assert "| searched | 4 | 0.750 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        replay_choices.main(["--out-dir", str(tmp_path), "missing"])


def test_an_adaptive_runs_rescue_statistics_are_summed_up_to_its_final_checkpoint(tmp_path, capsys):
    iterations = [(1.0, 0.5, 0, 1, 2), (0.5, 0.0, 1, 0, 0), (1.0, 1.0, 0, 0, 2)]
    rows = [{"iteration": i, "groups": 2, "all_fail_before": f, "all_pass_before": 0.0, "all_fail_after": a,
             "dead_after": a, "rescued_by_cache": c, "rescued_by_search": s, "searched_problems": n,
             "rescue_seconds": 2.0, "rescue_tokens": 100, "rescue_simulations": 8}
            for i, (f, a, c, s, n) in enumerate(iterations)]  # fmt: skip
    path = tmp_path / "adaptive.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = common.rescue_summary(path, last_iteration=1)  # the third iteration ran past the final checkpoint
    assert summary["iterations"] == 2 and summary["groups"] == 4
    assert summary["all_fail_before"] == pytest.approx(0.75) and summary["all_fail_after"] == pytest.approx(0.25)
    assert summary["rescued_share"] == pytest.approx(2 / 3)  # 2 of the 3 all-fail groups
    assert summary["search_rescue_rate"] == pytest.approx(0.5) and summary["rescue_seconds"] == pytest.approx(4.0)
    assert common.rescue_summary(tmp_path / "missing.jsonl") is None
    common.print_rescue({"azgym_adaptive": {"adaptive": [summary, None]}, "trl": {}})
    out = capsys.readouterr().out
    assert "azgym_adaptive" in out and "0.667" in out and "trl" not in out
