"""Learning on the real SmolLM2: GRPO + value steps on fixed 2-digit-addition trajectories."""

from __future__ import annotations

import random

import pytest
import torch

from agents.student import Student, StudentConfig
from agents.training.learner import Learner, LearnerConfig, Sample

pytestmark = pytest.mark.slow


def addition_samples(student, count=4, seed=0):
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        messages = [{"role": "user", "content": f"What is {a} + {b}? End with '#### <number>'."}]
        prompt = student.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tuple(student.tokenizer.encode(prompt, add_special_tokens=False))
        for answer, reward in ((a + b, 1.0), (a + b + rng.choice([-10, -1, 1, 10]), 0.0)):
            completion = tuple(
                student.tokenizer.encode(f"{a} + {b} = {answer}\n#### {answer}", add_special_tokens=False)
            )
            target = 1.0 if reward else -1.0
            samples.append(Sample(prompt_ids, completion, reward, f"p{i}", value_positions=(len(completion),),
                                  value_targets=(target,)))  # fmt: skip
    return samples


def evaluate(student, samples):
    with torch.no_grad():
        fwd, _, _ = student.forward_batch([(s.prompt_ids, s.completion_ids) for s in samples],
                                          [s.value_positions for s in samples])  # fmt: skip
    mean_logprob = (fwd.logprobs * fwd.mask).sum(-1) / fwd.mask.sum(-1)
    correct = torch.tensor([s.reward == 1.0 for s in samples])
    value_right = ((fwd.values[:, 0] > 0) == correct).float().mean()
    return mean_logprob[correct].mean().item(), mean_logprob[~correct].mean().item(), value_right.item(), fwd.values


def test_twenty_grpo_steps_raise_correct_logprob_and_value_accuracy():
    torch.manual_seed(0)
    student = Student.from_config(StudentConfig())
    samples = addition_samples(student)
    right_before, wrong_before, value_acc_before, _ = evaluate(student, samples)
    learner = Learner(student, LearnerConfig(learning_rate=2e-4, value_coef=1.0, micro_batch_size=8))
    for _ in range(20):
        learner.step(samples)
    right_after, wrong_after, value_acc_after, values = evaluate(student, samples)
    assert right_after > right_before + 0.05
    assert right_after - wrong_after > right_before - wrong_before  # the gap to the wrong answers widened
    assert value_acc_before <= 0.5 < value_acc_after  # a zero head starts at chance (values all 0)
    assert value_acc_after >= 0.75
