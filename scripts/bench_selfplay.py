"""Self-play throughput: generated tokens/s during MCTS self-play against plain batched ``generate``.

    python scripts/bench_selfplay.py                       # SmolLM2-135M, 2-digit addition, CPU
    python scripts/bench_selfplay.py --task gsm8k --data ../shared/data/gsm8k --device cuda

In one run, on the same model and problems:
1. MCTS self-play (``agents.loop.self_play``: B episodes in lockstep, batched expansion, value
   head on the student) with prefix reuse on, then the same episodes (same seeds) with it off.
   Counted: tokens the teachers sampled, prompt tokens prefilled, wall time.
2. Plain batched sampling with transformers' ``model.generate`` of the same solve prompts at the
   mean batch size (rows per call) that self-play's generate calls had, ``chunk_tokens`` new tokens.

Printed: tokens/s of each, prefill tokens per generated token with and without prefix reuse, and
last the ratio self-play tokens/s / plain generate tokens/s (1.0 = search costs nothing on top of
sampling the candidates; the difference is scoring priors, values and the tree).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np
import torch


def self_play_run(backend, problems, args) -> dict:
    from agents.loop import self_play
    from agents.mcts import MCTSAgent
    from agents.value import LMValueFunction
    from azgym.env import ReasoningEnv

    env = ReasoningEnv(problems, model=backend, task=args.task, num_right=args.num_right, num_wrong=args.num_wrong,
                       chunk_tokens=args.chunk_tokens, max_depth=args.max_depth, max_tokens=args.max_tokens,
                       rewards="outcome")  # fmt: skip
    agent = MCTSAgent(LMValueFunction(backend), num_simulations=args.simulations, seed=args.seed, reuse_tree=False)
    backend.stats.reset()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    episodes, stats = self_play(env, agent, list(range(len(problems))), args.group_size, rng, iteration=0,
                                weights_version=0, progress=True)  # fmt: skip
    seconds = time.perf_counter() - start
    counts = asdict(backend.stats)
    return {"seconds": seconds, "episodes": len(episodes), "moves": stats.moves, **counts,
            "tokens_per_s": counts["sampled"] / seconds, "prefill_per_token": counts["prefill"] / counts["sampled"],
            "batch": counts["generate_rows"] / max(counts["generate_calls"], 1)}  # fmt: skip


def plain_generate_rate(lm, problems, task, batch: int, new_tokens: int, repeats: int, seed: int) -> float:
    """Tokens/s of transformers' ``generate`` sampling ``batch`` solve prompts, best of ``repeats``."""
    from azgym.tasks.base import solve_messages

    prompts = [lm.chat_prompt(solve_messages(task.SYSTEM_PROMPT, problems[i % len(problems)].question))
               for i in range(batch)]  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--data", default="add2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--simulations", type=int, default=4)
    parser.add_argument("--num-right", type=int, default=2)
    parser.add_argument("--num-wrong", type=int, default=1)
    parser.add_argument("--chunk-tokens", type=int, default=16)
    parser.add_argument("--max-depth", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="plain generate calls (best one counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-no-reuse", action="store_true", help="skip the prefix-reuse-off self-play run")
    args = parser.parse_args()

    from azgym.env import TASKS
    from azgym.lm.hf import HFBackend

    task = TASKS[args.task]
    problems = task.load_problems(args.data, "train")[: args.problems]
    lm = HFBackend.from_name(args.model, device=args.device)
    runs = {"self-play, prefix reuse": self_play_run(lm, problems, args)}
    if not args.skip_no_reuse:
        plain = HFBackend(lm.model, lm.tokenizer, name=lm.name, prefix_reuse=False)
        runs["self-play, no reuse"] = self_play_run(plain, problems, args)
    batch = max(1, round(runs["self-play, prefix reuse"]["batch"]))
    rate = plain_generate_rate(lm, problems, task, batch, args.chunk_tokens, args.repeats, args.seed)

    print(f"{args.model} on {args.device}, {args.task}:{args.data}; {args.problems} problems x {args.group_size} "
          f"episodes, {args.simulations} simulations, K={args.num_right + args.num_wrong}, "
          f"chunk {args.chunk_tokens} tokens")  # fmt: skip
    for name, r in runs.items():
        print(f"  {name:24s} {r['seconds']:7.1f} s  {r['sampled']:6d} tokens sampled  {r['tokens_per_s']:7.1f} tok/s  "
              f"prefill {r['prefill']:7d} ({r['prefill_per_token']:.1f} per generated token)  "
              f"mean generate batch {r['batch']:.1f} rows")  # fmt: skip
    print(f"  {'plain model.generate':24s} batch {batch}, {args.chunk_tokens} new tokens: {rate:7.1f} tok/s")
    if "self-play, no reuse" in runs:
        cut = runs["self-play, no reuse"]["prefill_per_token"] / runs["self-play, prefix reuse"]["prefill_per_token"]
        print(f"prefill tokens per generated token: {cut:.2f}x fewer with prefix reuse")
    print(f"ratio self-play / plain generate tokens/s: {runs['self-play, prefix reuse']['tokens_per_s'] / rate:.2f}")


if __name__ == "__main__":
    main()
