"""LoRA dropout from 16-bit random lanes: its rate and scale, identity in eval and at p = 0, seeded draws, and the
swap into a LoRA student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agents.student import Student, StudentConfig
from agents.student.dropout import LaneDropout, use_lane_dropout
from helpers import tiny_llama


def test_the_rate_and_scale_are_those_of_inverted_dropout():
    dropout = LaneDropout(0.05).train()
    x = torch.ones(1000, 1001)  # an element count that is not a multiple of the four lanes
    y = dropout(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.95, abs=0.002)  # 1M draws: the standard error is 0.0002
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.95)
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)
    lanes = (y.flatten()[:1_000_000] != 0).view(-1, 4).float().mean(0)  # each lane of a 64-bit draw alike
    assert torch.allclose(lanes, torch.full((4,), 0.95), atol=0.003)


def test_eval_and_zero_rate_are_the_identity_and_draws_follow_the_seed():
    x = torch.randn(64, 32)
    assert LaneDropout(0.3).eval()(x) is x and LaneDropout(0.0).train()(x) is x
    torch.manual_seed(5)
    a = LaneDropout(0.3).train()(x)
    torch.manual_seed(5)
    b = LaneDropout(0.3).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, LaneDropout(0.3).train()(x))
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\)"):
        LaneDropout(1.0)


def test_a_lora_student_gets_lane_dropout_and_gradients_pass(tokenizer):
    student = Student.from_config(
        StudentConfig(model="tiny-llama"), model=tiny_llama(len(tokenizer)), tokenizer=tokenizer
    )
    dropouts = [m for m in student.model.modules() if isinstance(m, (LaneDropout, nn.Dropout))]
    assert dropouts and all(isinstance(m, LaneDropout) and m.p == 0.05 for m in dropouts)
    assert use_lane_dropout(student.model) == 0  # nothing left to swap
    student.model.train()
    fwd, _, _ = student.forward_batch([((5, 6, 7), (8, 9, 10))])
    fwd.logprobs.sum().backward()
    grads = [p.grad for n, p in student.model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)
