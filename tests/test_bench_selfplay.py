"""scripts/bench_selfplay.py on a tiny model: both runs sample the same tokens, the cache cuts prefill,
the ratio comes last."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
from azgym_bench import selfplay as bench  # noqa: E402

TINY = ["--problems", "1", "--group-size", "2", "--repeats", "1", "--simulations", "3", "--chunk-tokens", "6"]


def test_cache_on_and_off_in_one_run(tiny_dir, capsys):
    bench.main(["--model", str(tiny_dir), *TINY])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("ratio self-play (prefix cache) / plain generate tokens/s: ")
    sampled = [int(m) for m in re.findall(r"(\d+) tokens sampled", out)]
    assert len(sampled) == 2 and sampled[0] == sampled[1] > 0  # the same episodes, token for token
    before, after = map(float, re.search(r"prefill per generated token ([\d.]+) -> ([\d.]+)", out).groups())
    assert after < before / 2
    assert any(line.strip().startswith("time: generate") and "score" in line and "value" in line and "tree" in line
               and "other (env, proposer, driver)" in line for line in lines)  # fmt: skip


def test_search_kernels_are_compiled_before_the_timed_runs(tiny_dir, capsys, monkeypatch):
    from agents.mcts import gumbel, kernels

    dispatchers = [f for m in (kernels, gumbel) for f in vars(m).values() if hasattr(f, "signatures")]

    def compiled():
        return sum(len(f.signatures) for f in dispatchers)

    counts, run = [], bench.self_play_run

    def counted(*args, **kwargs):
        counts.append(compiled())
        out = run(*args, **kwargs)
        counts.append(compiled())
        return out

    monkeypatch.setattr(bench, "self_play_run", counted)
    bench.main(["--model", str(tiny_dir), *TINY, "--no-compare"])
    assert counts[0] > 0 and counts[0] == counts[1]  # nothing left to compile once timing starts
    assert "search kernels compiled or loaded before timing" in capsys.readouterr().out


def test_no_cache_alone_and_bad_input(tiny_dir, capsys):
    bench.main(["--model", str(tiny_dir), *TINY, "--no-cache", "--no-compare"])
    out = capsys.readouterr().out
    assert "prefix cache peak" not in out and out.strip().splitlines()[-1].startswith("ratio self-play (no cache")
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tiny_dir), "--prefix-cache-mib", "0"])
    assert "--prefix-cache-mib: must be >= 1" in capsys.readouterr().err
