"""Benchmark a GRPO learner step against a plain forward + backward of the same model and batch.

    python scripts/bench_train.py

Both sides run on the same student (SmolLM2-135M-Instruct with LoRA r=32, float32 weights, CPU by default,
in the student's learner context: bfloat16 autocast where the CPU multiplies it natively (``--precision``) with
the frozen base's casts stored, plain attention for short batches)
and the same batch (8 chat prompts with completions): the baseline is what a plain fine-tuning
step costs (forward, cross-entropy on the completion tokens, backward, AdamW step); the GRPO step is
the learner's (forward with hidden states, value head, GRPO + value loss, backward, clip, AdamW),
once on samples it has not seen (so it runs the reference pass for the KL term) and once on
samples whose reference log-probs it already knows (with LoRA the reference is the frozen base,
so the learner computes them once per sample and reuses them in later steps). Trained
tokens/second = completion tokens per second; the last lines are the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from agents.student import Student, StudentConfig, token_logprobs
from agents.training.learner import Learner, LearnerConfig, Sample
from agents.training.samples import carried
from azgym.lm.precision import PRECISIONS
from azgym_bench import roofline


def make_batch(student: Student, size: int, completion_tokens: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    vocab = len(student.tokenizer)
    samples = []
    for i in range(size):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        messages = [{"role": "user", "content": f"What is {a} + {b}?"}]
        text = student.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tuple(student.tokenizer.encode(text, add_special_tokens=False))
        completion = tuple(rng.randrange(100, vocab) for _ in range(completion_tokens))
        samples.append(Sample(prompt, completion, float(i % 2), f"p{i // 4}", value_positions=(completion_tokens,),
                              value_targets=(float(i % 2),)))  # fmt: skip
    return samples


def plain_step(student: Student, optimizer: torch.optim.Optimizer, samples: list[Sample]) -> None:
    ids, mask, prompt_lengths = student.right_pad([(s.prompt_ids, s.completion_ids) for s in samples])
    with student.autocast(ids.shape[1]):
        logits = student.model(input_ids=ids, attention_mask=mask).logits
    logprobs = token_logprobs(logits, ids)
    positions = torch.arange(ids.shape[1] - 1)[None, :]
    completion = (positions >= torch.tensor(prompt_lengths)[:, None] - 1) & (mask[:, 1:] > 0)
    loss = -(logprobs * completion).sum() / completion.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.trainable_parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run round-robin so that drifts in machine speed hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_index:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="the student's (both steps run in it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = Student.from_config(StudentConfig(model=args.model, precision=args.precision))
    samples = make_batch(student, args.batch, args.completion_tokens)
    tokens = args.batch * args.completion_tokens

    optimizer = torch.optim.AdamW(student.trainable_parameters(), lr=1e-5)
    learner = Learner(student, LearnerConfig(learning_rate=1e-5, micro_batch_size=args.batch))

    learner.step(samples)
    known = carried(samples, learner.last_logprobs)  # as replayed samples carry their old and reference log-probs
    seconds = timed(
        {"plain": lambda: plain_step(student, optimizer, samples), "new": lambda: learner.step(samples),
         "known": lambda: learner.step(known)},
        args.repeats,
    )  # fmt: skip
    plain, grpo, grpo_cached = seconds["plain"], seconds["new"], seconds["known"]

    print(
        f"batch {args.batch} x {args.completion_tokens} completion tokens, model {args.model}, "
        f"median of {args.repeats}, precision {args.precision}: {str(student.compute_dtype).removeprefix('torch.')}"
    )
    print(f"plain forward+backward+AdamW: {plain:6.2f} s/step  {tokens / plain:8.1f} trained tokens/s")
    print(f"GRPO step, new samples (reference pass): {grpo:6.2f} s/step  {tokens / grpo:8.1f} tokens/s")
    print(f"GRPO step, known samples:                {grpo_cached:6.2f} s/step  {tokens / grpo_cached:8.1f} tokens/s")
    bandwidth = roofline.measured_bandwidth()
    trainable = sum(p.numel() * p.element_size() for p in student.trainable_parameters())
    micro_batches = -(-args.batch // learner.config.micro_batch_size)
    bound = roofline.train_bound(roofline.model_bytes(student.model), trainable, micro_batches, bandwidth)
    print(roofline.line("learner steps, a GRPO step on known samples", 1 / grpo_cached, bound, "steps/s", bandwidth))
    print(f"ratio GRPO (new samples)/plain: {plain / grpo:.2f}")
    print(f"ratio GRPO (known samples)/plain: {plain / grpo_cached:.2f}")
