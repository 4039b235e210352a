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


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "expected"),
    [
        (math.log(1.25), 1.0, -1.25),  # inside the clip-higher bound 1.28: unclipped
        (math.log(1.5), 1.0, -1.28),  # above it: clipped at 1 + 0.28
        (math.log(0.5), -1.0, 0.8),  # the lower bound stays 1 - 0.2
    ],
)
def test_clip_higher_moves_only_the_upper_bound(log_ratio, advantage, expected):
    old = torch.tensor([[-1.0]])
    loss, metrics = losses.grpo_loss(old + log_ratio, old, None, torch.tensor([advantage]), torch.ones(1, 1),
                                     kl_coef=0.0, clip_eps=0.2, clip_eps_high=0.28)  # fmt: skip
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["clip_fraction"].item() == (0.0 if log_ratio == math.log(1.25) else 1.0)


# per-token losses of two sequences, 3 tokens and 1 token long: l = [[1, 2, 3], [8, pad, pad]]
TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0], [8.0, 5.0, 5.0]])
TOKEN_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("sequence", (2.0 + 8.0) / 2),  # GRPO: mean per sequence, then over sequences
        ("token", (1 + 2 + 3 + 8) / 4),  # DAPO: every token weighs the same
        ("constant", (1 + 2 + 3 + 8) / (2 * 10)),  # Dr. GRPO: sum / (sequences x max_tokens=10)
    ],
)
def test_aggregations_hand_computed(aggregation, expected):
    assert losses.aggregate(TOKEN_LOSS, TOKEN_MASK, aggregation, max_tokens=10).item() == pytest.approx(expected)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_micro_batch_shares_add_up_to_the_whole_batch(aggregation):
    scale = {"num_sequences": 2, "num_tokens": 4.0, "max_tokens": 10}
    whole = losses.aggregate(TOKEN_LOSS, TOKEN_MASK, aggregation, max_tokens=10)
    parts = sum(losses.aggregate(TOKEN_LOSS[i : i + 1], TOKEN_MASK[i : i + 1], aggregation, **scale) for i in (0, 1))
    assert parts.item() == pytest.approx(whole.item())


def test_dr_grpo_needs_its_constant():
    with pytest.raises(ValueError, match="max_tokens"):
        losses.aggregate(TOKEN_LOSS, TOKEN_MASK, "constant")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        losses.aggregate(TOKEN_LOSS, TOKEN_MASK, "batch")


def test_grpo_loss_with_dr_grpo_advantages_and_token_aggregation():
    """Dr. GRPO / DAPO end to end: advantages without the std, the clipped objective at ratio 1 (-A per
    token), pooled over tokens. Group rewards [1, -1, -1, -1]: mean -0.5, advantages [1.5, -0.5, -0.5, -0.5]."""
    adv = losses.group_advantages(torch.tensor([1.0, -1.0, -1.0, -1.0]), torch.zeros(4, dtype=torch.long),
                                  normalize_std=False)  # fmt: skip
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))
    logp = torch.full((4, 2), -1.0)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # the winner is 2 tokens long
    loss, _ = losses.grpo_loss(logp, logp, None, adv, mask, kl_coef=0.0, aggregation="token")
    assert loss.item() == pytest.approx((-1.5 * 2 + 0.5 * 3) / 5)
    loss, _ = losses.grpo_loss(logp, logp, None, adv, mask, kl_coef=0.0, aggregation="sequence")
    assert loss.item() == pytest.approx((-1.5 + 0.5 * 3) / 4)
