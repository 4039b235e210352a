"""Self-play throughput: generated tokens/s during MCTS self-play against plain batched ``generate``.

    python scripts/bench_selfplay.py                       # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_selfplay.py --task gsm8k --data ../shared/data/gsm8k --device cuda

In one run, on the same model and problems:
1. MCTS self-play (``agents.alphazero.selfplay.self_play``: B episodes in lockstep, batched expansion, value
   head on the student) with the backend's cross-call prefix cache on (``--cache``, the default; its budget
   ``--prefix-cache-mib``), then the same episodes (same seeds) with it off: only the in-call prefix reuse,
   the figure before the cache (``--no-compare`` skips the second run; ``--no-cache`` swaps the two).
   ``--full-prefill`` adds a third run with no prefix reuse at all. Counted per run: tokens the teachers
   sampled, prompt tokens prefilled, tokens scored and run for values, tokens taken from the cache,
   and the time in the backend's ``generate``, ``score`` and ``last_hidden`` (values).
2. Plain batched sampling with transformers' ``model.generate`` of the same solve prompts at the
   mean batch size (rows per call) that self-play's generate calls had, ``chunk_tokens`` new tokens.

The search's numba kernels are compiled (or loaded from numba's disk cache) on a small synthetic search
before anything is timed: a one-off cost of a process (seconds when the cache is cold, as after a fresh
checkout), printed on its own line, not a cost of self-play.

Printed: per run its tokens/s, the shares of its time (the backend's generate / score / value, the
search tree's own work; other: the env, the proposer's Python and the driver), prefill tokens per
generated token (prompt tokens only, the figure recorded before; and every token run besides decoding:
prompts, scored steps, value passes), then last the ratio self-play tokens/s / plain generate tokens/s
of the first run (1.0 = search costs nothing on top of sampling the candidates).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from agents.alphazero.config import cpu_preset
from agents.mcts import SearchConfig
from azgym.cli import parse_config
from azgym.config import EnvConfig, check_fields, option, raise_problems
from azgym.lm.precision import PRECISIONS
from azgym_bench import roofline


@dataclass(frozen=True)
class BenchOptions:
    """The model, the problems, the runs compared and the repeats of the plain-generate baseline."""

    model: str = option("smollm2-135m-instruct", "the model (teacher, scorer and value head's base)")
    device: str = option("cpu", "device of the model")
    problems: int = option(4, "problems played (the first N of the train split)")
    group_size: int = option(2, "episodes per problem")
    repeats: int = option(3, "plain generate calls (the best one counts)")
    seed: int = option(0, "seeds the episodes and sampling")
    cache: bool = option(True, "the measured self-play run uses the cross-call prefix cache (--no-cache: in-call "
                               "prefix reuse only, the figure before the cache)")  # fmt: skip
    compare: bool = option(True, "also run self-play with the cache the other way, same episodes: before and after")
    prefix_cache_mib: int = option(1024, "the prefix cache's memory budget (MiB) where it is on")
    full_prefill: bool = option(False, "also run self-play with no prefix reuse at all (every row prefilled in full)")
    precision: str = option("auto", "the backend's precision (auto: bfloat16 where native); plain generate runs the "
                                    "same weights", choices=PRECISIONS)  # fmt: skip

    def __post_init__(self):
        raise_problems(self, check_fields(self, {
            "problems": (self.problems >= 1, ">= 1"), "group_size": (self.group_size >= 1, ">= 1"),
            "repeats": (self.repeats >= 1, ">= 1"), "prefix_cache_mib": (self.prefix_cache_mib >= 1, ">= 1"),
        }))  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """Self-play throughput: generated tokens/s during MCTS self-play against plain batched generate."""

    env: EnvConfig = field(default_factory=lambda: cpu_preset().env)
    search: SearchConfig = field(default_factory=lambda: cpu_preset().search)
    bench: BenchOptions = field(default_factory=BenchOptions)


def warm_search_kernels(search: SearchConfig, num_actions: int) -> float:
    """Seconds to compile (or load from numba's cache) the kernels of this search, on a synthetic tree."""
    from agents.mcts import MCTS
    from agents.mcts.synthetic import HashTreeModel

    start = time.perf_counter()
    model = HashTreeModel(num_actions=num_actions, max_depth=4)
    MCTS(search).search(model, model.roots(2), np.random.default_rng(0))
    return time.perf_counter() - start


def self_play_run(backend, problems, config: BenchConfig) -> dict:
    from agents.alphazero.selfplay import self_play
    from agents.mcts import MCTSAgent
    from agents.student.value import LMValueFunction
    from azgym.env import ReasoningEnv

    env = ReasoningEnv.from_config(config.env, model=backend, data=problems)
    seed = config.bench.seed
    agent = MCTSAgent(LMValueFunction(backend), config=config.search, seed=seed, reuse_tree=False)
    tree_seconds = [0.0]
    search = agent.search

    def timed_search(env, states):  # the search tree's own time, apart from the model calls it makes
        result = search(env, states)
        tree_seconds[0] += result.seconds["tree"]
        return result

    agent.search = timed_search
    backend.stats.reset()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    episodes, stats = self_play(env, agent, list(range(len(problems))), config.bench.group_size, rng, iteration=0,
                                weights_version=0, progress=True)  # fmt: skip
    seconds = time.perf_counter() - start
    c = asdict(backend.stats)
    sampled = max(c["sampled"], 1)
    tree = backend.prefix_cache
    return {"seconds": seconds, "episodes": len(episodes), "moves": stats.moves, **c,
            "tokens_per_s": c["sampled"] / seconds, "prefill_per_token": c["prefill"] / sampled,
            "run_per_token": (c["prefill"] + c["scored"] + c["valued"]) / sampled,
            "shares": {**{k: c[f"{k}_s"] / seconds for k in ("generate", "score", "value")},
                       "tree": tree_seconds[0] / seconds},
            "cache_peak_mib": tree.peak_bytes / 2**20 if tree else 0.0, "cache_evicted": tree.evicted if tree else 0,
            "batch": c["generate_rows"] / max(c["generate_calls"], 1)}  # fmt: skip


def plain_generate_rate(lm, problems, system, batch: int, new_tokens: int, repeats: int, seed: int) -> float:
    """Tokens/s of transformers' ``generate`` on the weights the backend runs (its bfloat16 copy where it has one)
    sampling ``batch`` solve prompts, best of ``repeats``."""
    from azgym.prompts import solve_prompt_ids

    prompts = [solve_prompt_ids(lm, system, problems[i % len(problems)].question) for i in range(batch)]
    ids, mask = lm.left_pad(prompts)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    best = 0.0
    for r in range(repeats):
        torch.manual_seed(seed + r)
        start = time.perf_counter()
        with torch.inference_mode():
            out = lm.runner.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
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
    warm = warm_search_kernels(search, env.num_right + env.num_wrong)
    lm = HFBackend.from_name(bench.model, device=bench.device, prefix_cache_bytes=0)
    budget = bench.prefix_cache_mib * 2**20
    variants = {"prefix cache": {"prefix_cache_bytes": budget}, "no cache (before)": {"prefix_cache_bytes": 0}}
    order = list(variants) if bench.cache else list(reversed(variants))
    order = order if bench.compare else order[:1]
    if bench.full_prefill:
        variants["no reuse at all"] = {"prefix_reuse": False}
        order.append("no reuse at all")
    runs = {}
    for name in order:  # a fresh backend on the same weights: every run starts with an empty cache
        backend = HFBackend(lm.model, lm.tokenizer, name=lm.name, precision=bench.precision, **variants[name])
        runs[name] = self_play_run(backend, problems, config)
    first = runs[order[0]]
    batch = max(1, round(first["batch"]))
    rate = plain_generate_rate(backend, problems, system_prompt(env.task, env.prompt), batch, env.chunk_tokens,
                               bench.repeats, bench.seed)  # fmt: skip

    print(f"{bench.model} on {bench.device}, {env.task}:{env.data or 'default'}; {bench.problems} problems x "
          f"{bench.group_size} episodes, {search.num_simulations} simulations, K={env.num_right + env.num_wrong}, "
          f"chunk {env.chunk_tokens} tokens, right candidates under the {env.right_prompt} prompt; "
          f"precision {bench.precision}: {str(backend.compute_dtype).removeprefix('torch.')}")  # fmt: skip
    print(f"  search kernels compiled or loaded before timing: {warm:.1f} s (once per process)")
    for name, r in runs.items():
        shares = "  ".join(f"{k} {v:4.0%}" for k, v in r["shares"].items())
        print(f"  self-play, {name:18s} {r['seconds']:7.1f} s  {r['sampled']:6d} tokens sampled  "
              f"{r['tokens_per_s']:7.1f} tok/s  mean generate batch {r['batch']:.1f} rows")  # fmt: skip
        print(f"      time: {shares}  other (env, proposer, driver) {1 - sum(r['shares'].values()):4.0%}")
        print(f"      prefill {r['prefill']:7d} ({r['prefill_per_token']:.2f} per generated token); run besides "
              f"decoding (prefill + scored + valued) {r['prefill'] + r['scored'] + r['valued']:7d} "
              f"({r['run_per_token']:.2f} per generated token); from the cache {r['reused']:7d}")  # fmt: skip
        if r["cache_peak_mib"]:
            print(f"      prefix cache peak {r['cache_peak_mib']:.1f} MiB of {bench.prefix_cache_mib}, "
                  f"{r['cache_evicted']} nodes evicted")  # fmt: skip
    print(f"  {'plain model.generate':29s} batch {batch}, {env.chunk_tokens} new tokens: {rate:7.1f} tok/s")
    for name, r in runs.items():
        if name != order[0]:
            print(f"ratio self-play ({name}) / plain generate tokens/s: {r['tokens_per_s'] / rate:.2f}")
    if {"prefix cache", "no cache (before)"} <= set(runs):
        on, off = runs["prefix cache"], runs["no cache (before)"]
        print(f"prefix cache: {off['seconds'] / on['seconds']:.2f}x faster self-play, prefill per generated token "
              f"{off['prefill_per_token']:.2f} -> {on['prefill_per_token']:.2f}")  # fmt: skip
    bandwidth = roofline.measured_bandwidth()
    weights = roofline.model_bytes(backend.runner)  # the weights decoding reads, in the dtype it reads them
    kv = roofline.kv_bytes_per_token(lm.model.config, next(backend.runner.parameters()).element_size())
    prompt = sum(len(lm.chat_prompt([{"role": "user", "content": p.question}])) for p in problems) / len(problems)
    context = int(prompt + env.max_tokens / 2)  # a mean position of a decoded token: the prompt and half a response
    bound = roofline.decode_bound(weights, kv, batch, context, bandwidth)
    print(roofline.line(f"decode at batch {batch}, ~{context} tokens of context", rate, bound, "tok/s", bandwidth)
          + " by plain generate, " + f"{first['tokens_per_s'] / bound:.1%} by self-play")  # fmt: skip
    print(f"ratio self-play ({order[0]}) / plain generate tokens/s: {first['tokens_per_s'] / rate:.2f}")
