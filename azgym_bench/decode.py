"""One decode step: transformers' forward against the lean decoder, on the same bfloat16 inference copy.

    python scripts/bench_decode.py                 # SmolLM2-135M, batches 1, 8, 16 at 72 tokens of context

For each batch size: a prompt of ``--context`` random tokens a row is prefilled once; then the step that decodes
one token a row is timed (the median of ``--repeats``, after two warm-up steps), through the model's forward on
transformers' cache and through :class:`~azgym.lm.decode.LeanDecoder` on its preallocated one, alternating. Also
printed: the largest difference of the two steps' logits (bfloat16 rounding: the decoder is exact to float32
rounding in float32, tests/test_decode.py) and whether the greedy tokens agree. The ratio forward / lean at the
largest batch is printed last.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from azgym.lm.decode import lean_decoder
from azgym.lm.hf import HFBackend
from azgym.lm.hf_prefix import cache_argument
from azgym.lm.precision import InferenceCopy


@torch.inference_mode()
def time_batch(model, decoder, rows: int, context: int, repeats: int) -> tuple[float, float, float, float]:
    """Median seconds of a decode step through the forward and through the lean decoder, the largest difference of
    their logits and the share of rows whose greedy token agrees."""
    ids = torch.randint(100, 10_000, (rows, context))
    token = torch.randint(100, 10_000, (rows,))
    mask = torch.ones(rows, context + 1, dtype=torch.long)
    position = torch.full((rows, 1), context)
    prefilled = model(input_ids=ids, use_cache=True)
    cache = getattr(prefilled, "cache", None) or prefilled.past_key_values
    lean = decoder.start(cache, mask[:, :-1], 1)
    keyword = cache_argument(model)
    times: dict[str, list[float]] = {"forward": [], "lean": []}
    logits: dict[str, torch.Tensor] = {}
    for i in range(repeats + 2):
        kwargs = {keyword: copy.deepcopy(cache), "attention_mask": mask, "position_ids": position, "use_cache": True}
        start = time.perf_counter()
        logits["forward"] = model(input_ids=token[:, None], **kwargs).logits[:, -1].float()
        middle = time.perf_counter()
        lean.length = context
        logits["lean"] = decoder.step(lean, token, mask, position)
        if i >= 2:  # two warm-up steps
            times["forward"].append(middle - start)
            times["lean"].append(time.perf_counter() - middle)
    diff = (logits["lean"] - logits["forward"]).abs().max().item()
    agree = (logits["lean"].argmax(-1) == logits["forward"].argmax(-1)).float().mean().item()
    return statistics.median(times["forward"]), statistics.median(times["lean"]), diff, agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a Llama-layout model (short name or path)")
    parser.add_argument("--batches", default="1,8,16", help="comma list of batch sizes (rows decoded together)")
    parser.add_argument("--context", type=int, default=72, help="tokens in the cache before the timed step")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per side and batch (the median counts)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    model = InferenceCopy(HFBackend.from_name(args.model).model, torch.bfloat16).model
    decoder = lean_decoder(model)
    if decoder is None:
        raise SystemExit(f"{args.model} is not a Llama-layout model: the lean decoder does not cover it")
    print(f"{args.model}, bfloat16 inference copy, {args.context} tokens of context, median of {args.repeats}")
    ratio = 0.0
    for rows in batches:
        forward, lean, diff, agree = time_batch(model, decoder, rows, args.context, args.repeats)
        ratio = forward / lean
        print(
            f"batch {rows:3d}: forward {forward * 1e3:6.1f} ms  lean {lean * 1e3:6.1f} ms  ({rows / lean:7.1f} tok/s)"
            f"  max |logit diff| {diff:.3f}, greedy tokens agree {agree:.0%}"
        )
    print(f"ratio forward / lean decode step (batch {batches[-1]}): {ratio:.2f}")
