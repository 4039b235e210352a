"""Self-play throughput: generated tokens/s during MCTS self-play against plain batched ``generate``.

    python scripts/bench_selfplay.py                       # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_selfplay.py --task gsm8k --data ../shared/data/gsm8k --device cuda

In one run, on the same model and problems:
1. MCTS self-play (``agents.alphazero.selfplay.self_play``: B episodes in lockstep, batched expansion, value
   head on the student) with prefix reuse on, then the same episodes (same seeds) with it off.
   Counted: tokens the teachers sampled, prompt tokens prefilled, wall time.
2. Plain batched sampling with transformers' ``model.generate`` of the same solve prompts at the
   mean batch size (rows per call) that self-play's generate calls had, ``chunk_tokens`` new tokens.

Printed: tokens/s of each, prefill tokens per generated token with and without prefix reuse, and
last the ratio self-play tokens/s / plain generate tokens/s (1.0 = search costs nothing on top of
sampling the candidates; the difference is scoring priors, values and the tree).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from agents.alphazero.config import cpu_preset
from agents.mcts import SearchConfig
from azgym.cli import parse_config
from azgym.config import EnvConfig, option


@dataclass(frozen=True)
class BenchOptions:
    """The model, the problems and the repeats of the plain-generate baseline."""

    model: str = option("smollm2-135m-instruct", "the model (teacher, scorer and value head's base)")
    device: str = option("cpu", "device of the model")
    problems: int = option(4, "problems played (the first N of the train split)")
    group_size: int = option(2, "episodes per problem")
    repeats: int = option(3, "plain generate calls (the best one counts)")
    seed: int = option(0, "seeds the episodes and sampling")
    skip_no_reuse: bool = option(False, "skip the prefix-reuse-off self-play run")


@dataclass(frozen=True)
class BenchConfig:
    """Self-play throughput: generated tokens/s during MCTS self-play against plain batched generate."""

    env: EnvConfig = field(default_factory=lambda: cpu_preset().env)
    search: SearchConfig = field(default_factory=lambda: cpu_preset().search)
    bench: BenchOptions = field(default_factory=BenchOptions)


def self_play_run(backend, problems, config: BenchConfig) -> dict:
    from agents.alphazero.selfplay import self_play
    from agents.mcts import MCTSAgent
    from agents.student.value import LMValueFunction
    from azgym.env import ReasoningEnv

    env = ReasoningEnv.from_config(config.env, model=backend, data=problems)
    seed = config.bench.seed
    agent = MCTSAgent(LMValueFunction(backend), config=config.search, seed=seed, reuse_tree=False)
    backend.stats.reset()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    episodes, stats = self_play(env, agent, list(range(len(problems))), config.bench.group_size, rng, iteration=0,
                                weights_version=0, progress=True)  # fmt: skip
    seconds = time.perf_counter() - start
    counts = asdict(backend.stats)
    return {"seconds": seconds, "episodes": len(episodes), "moves": stats.moves, **counts,
            "tokens_per_s": counts["sampled"] / seconds, "prefill_per_token": counts["prefill"] / counts["sampled"],
            "batch": counts["generate_rows"] / max(counts["generate_calls"], 1)}  # fmt: skip


def plain_generate_rate(lm, problems, system, batch: int, new_tokens: int, repeats: int, seed: int) -> float:
    """Tokens/s of transformers' ``generate`` sampling ``batch`` solve prompts, best of ``repeats``."""
    from azgym.prompts import solve_prompt_ids

    prompts = [solve_prompt_ids(lm, system, problems[i % len(problems)].question) for i in range(batch)]
    ids, mask = lm.left_pad(prompts)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    best = 0.0
    for r in range(repeats):
        torch.manual_seed(seed + r)
        start = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                    max_new_tokens=new_tokens, pad_token_id=lm.pad_id)  # fmt: skip
        seconds = time.perf_counter() - start
        new = out[:, ids.shape[1] :]
        ended = torch.zeros(len(new), dtype=torch.bool, device=new.device)
        tokens = 0
        for t in range(new.shape[1]):  # count tokens up to each row's end of sequence
            tokens += int((~ended).sum())
            ended |= torch.isin(new[:, t], torch.tensor(sorted(lm.eos_ids), device=new.device))
        best = max(best, tokens / seconds)
    return best


def main(argv=None) -> None:
    config = parse_config(BenchConfig, argv)
    env, search, bench = config.env, config.search, config.bench

    from azgym.lm.hf import HFBackend
    from azgym.prompts import system_prompt
    from azgym.tasks import load_problems

    problems = load_problems(env.task, env.data, "train")[: bench.problems]
    lm = HFBackend.from_name(bench.model, device=bench.device)
    runs = {"self-play, prefix reuse": self_play_run(lm, problems, config)}
    if not bench.skip_no_reuse:
        plain = HFBackend(lm.model, lm.tokenizer, name=lm.name, prefix_reuse=False)
        runs["self-play, no reuse"] = self_play_run(plain, problems, config)
    batch = max(1, round(runs["self-play, prefix reuse"]["batch"]))
    rate = plain_generate_rate(lm, problems, system_prompt(env.task, env.prompt), batch, env.chunk_tokens,
                               bench.repeats, bench.seed)  # fmt: skip

    print(f"{bench.model} on {bench.device}, {env.task}:{env.data or 'default'}; {bench.problems} problems x "
          f"{bench.group_size} episodes, {search.num_simulations} simulations, K={env.num_right + env.num_wrong}, "
          f"chunk {env.chunk_tokens} tokens")  # fmt: skip
    for name, r in runs.items():
        print(f"  {name:24s} {r['seconds']:7.1f} s  {r['sampled']:6d} tokens sampled  {r['tokens_per_s']:7.1f} tok/s  "
              f"prefill {r['prefill']:7d} ({r['prefill_per_token']:.1f} per generated token)  "
              f"mean generate batch {r['batch']:.1f} rows")  # fmt: skip
    print(f"  {'plain model.generate':24s} batch {batch}, {env.chunk_tokens} new tokens: {rate:7.1f} tok/s")
    if "self-play, no reuse" in runs:
        cut = runs["self-play, no reuse"]["prefill_per_token"] / runs["self-play, prefix reuse"]["prefill_per_token"]
        print(f"prefill tokens per generated token: {cut:.2f}x fewer with prefix reuse")
    print(f"ratio self-play / plain generate tokens/s: {runs['self-play, prefix reuse']['tokens_per_s'] / rate:.2f}")


if __name__ == "__main__":
    main()
