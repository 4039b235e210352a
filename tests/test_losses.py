"""Every loss on small tensors with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from agents.training import losses


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = losses.group_advantages(rewards, groups)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    centred = losses.group_advantages(rewards, groups, normalize_std=False)
    torch.testing.assert_close(centred, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))


def test_group_advantages_clip():
    rewards = torch.tensor([10.0] + [0.0] * 9)  # mean 1, std 3: the outlier is +3, the rest -1/3
    adv = losses.group_advantages(rewards, torch.zeros(10, dtype=torch.long), clip=None)
    assert adv[0].item() == pytest.approx(3.0, abs=1e-5) and adv[1].item() == pytest.approx(-1 / 3, abs=1e-5)
    clipped = losses.group_advantages(rewards, torch.zeros(10, dtype=torch.long), clip=2.0)
    assert clipped[0].item() == pytest.approx(2.0)


def test_kl_k3():
    same = torch.tensor([-0.3, -2.0])
    assert losses.kl_k3(same, same).abs().max() == 0
    value = losses.kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2.0)]))
    assert value.item() == pytest.approx(2.0 - math.log(2.0) - 1.0)


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "expected"),
    [
        (0.0, 1.0, -1.0),  # ratio 1: -A
        (math.log(1.5), 1.0, -1.2),  # above the clip, positive advantage: clipped at 1.2
        (math.log(1.5), -1.0, 1.5),  # above the clip, negative advantage: the unclipped (worse) term
        (math.log(0.5), 1.0, -0.5),  # below the clip, positive advantage: unclipped
        (math.log(0.5), -1.0, 0.8),  # below the clip, negative advantage: clipped at 0.8
    ],
)
def test_grpo_clipped_objective(log_ratio, advantage, expected):
    old = torch.tensor([[-1.0]])
    loss, metrics = losses.grpo_loss(
        old + log_ratio, old, None, torch.tensor([advantage]), torch.ones(1, 1), kl_coef=0.0
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["clip_fraction"].item() == (0.0 if log_ratio == 0 else 1.0)


def test_grpo_kl_term_and_identical_policies():
    logp = torch.tensor([[-1.0, -2.0]])
    loss, metrics = losses.grpo_loss(logp, logp, logp, torch.tensor([0.0]), torch.ones(1, 2))
    assert loss.item() == 0.0 and metrics["kl"].item() == 0.0
    ref = logp + math.log(2.0)
    loss, metrics = losses.grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 2), kl_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * (1.0 - math.log(2.0)))


def test_token_and_sequence_aggregation():
    values = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert losses.masked_mean(values, mask, "token").item() == pytest.approx(2.0)
    assert losses.masked_mean(values, mask, "sequence").item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="aggregation"):
        losses.masked_mean(values, mask, "batch")


def test_legacy_and_apo():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
    rewards = torch.tensor([1.0, 0.5])
    assert losses.legacy_loss(logp, rewards, torch.ones(2, 2)).item() == pytest.approx((2.0 + 1.0) / 2)
    loss, metrics = losses.apo_loss(logp, logp, rewards, torch.ones(2, 2), beta=0.1)
    assert loss.item() == pytest.approx(1.5) and metrics["kl"].item() == 0.0
    ref = logp + math.log(2.0)
    loss, _ = losses.apo_loss(logp, ref, rewards, torch.ones(2, 2), beta=0.1)
    assert loss.item() == pytest.approx(1.5 + 0.1 * (1.0 - math.log(2.0)))


def test_value_loss():
    values = torch.tensor([[0.5, 0.0], [-1.0, 9.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the 9.0 is padding
    assert losses.value_loss(values, targets, mask).item() == pytest.approx((0.25 + 0.0 + 4.0) / 3)


def test_visit_distillation_is_minimal_at_the_visit_distribution():
    visits = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    matched = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1.0]])).requires_grad_()
    loss = losses.visit_distillation_loss(matched, visits, valid)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert loss.item() == pytest.approx(entropy, abs=1e-6)
    loss.backward()
    assert matched.grad.abs().max().item() < 1e-6  # a stationary point
    for other in ([0.25, 0.5, 0.25, 1.0], [0.9, 0.05, 0.05, 1.0]):
        worse = losses.visit_distillation_loss(torch.log(torch.tensor([other])), visits, valid)
        assert worse.item() > loss.item()
