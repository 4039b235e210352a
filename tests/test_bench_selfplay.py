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
    roof = re.search(
        r"roofline \(decode at batch \d+, ~\d+ tokens of context\): ([\d,.]+) tok/s at ([\d.]+) GB/s "
        r"measured in this run; reached ([\d.]+)% by plain generate, ([\d.]+)% by self-play",
        out,
    )
    assert roof and float(roof.group(2)) > 0 and 0 <= float(roof.group(3)) < 100, out[-600:]


def test_the_roofline_arithmetic():
    from azgym_bench import roofline

    # 4 rows read 500 weight bytes and 4 x 5 tokens x 10 bytes of cache per step: 700 bytes at 700 B/s, 4 tokens
    assert roofline.decode_bound(500, 10, batch=4, context=5, bandwidth=700.0) == 4.0
    assert roofline.train_bound(100, 10, micro_batches=2, bandwidth=700.0) == 1.0  # 3 x 100 x 2 + 10 x 10 bytes
    config = type("C", (), {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                            "hidden_size": 32})()  # fmt: skip
    assert roofline.kv_bytes_per_token(config, dtype_bytes=4) == 2 * 2 * 2 * 8 * 4
    assert roofline.measured_bandwidth(megabytes=8, repeats=2) > 1e8  # any machine copies more than 100 MB/s


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
