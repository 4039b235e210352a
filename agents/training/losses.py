"""Losses: pure tensor functions, each docstring giving its formula.

Shapes: B sequences, T token positions. ``mask`` is 1 on the completion tokens being trained.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, *, normalize_std: bool = True, clip: float | None = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:  # fmt: skip
    """GRPO advantages: each reward relative to the other samples of its group (same problem).

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)`` (population std; without ``normalize_std``
    just ``r_i - mean_g(r)``), then clipped to ``[-clip, clip]``. A group of one gets 0.

    >>> adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1]))
    >>> [round(a, 4) for a in adv.tolist()]
    [1.0, -1.0, 0.0, 0.0]
    """
    rewards = rewards.double()
    _, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(inverse.max()) + 1, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    mean = torch.zeros_like(count).index_add_(0, inverse, rewards) / count
    centred = rewards - mean[inverse]
    if normalize_std:
        var = torch.zeros_like(count).index_add_(0, inverse, centred**2) / count
        centred = centred / (var.sqrt()[inverse] + eps)
    if clip is not None:
        centred = centred.clamp(-clip, clip)
    return centred.float()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 when equal).

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0]))
    tensor([0., 0.])
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token") -> torch.Tensor:
    """Mean over masked tokens: "token" pools every token of the batch; "sequence" averages each
    sequence's tokens first, then the sequences (the original GRPO)."""
    if aggregation == "token":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if aggregation == "sequence":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_sequence[mask.sum(-1) > 0].mean() if (mask.sum(-1) > 0).any() else per_sequence.sum() * 0
    raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")


def grpo_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float = 0.2, kl_coef: float = 0.01,
    aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """GRPO: the PPO clipped objective with group advantages, plus a KL penalty to the reference.

    Per token: ``rho = exp(logp - logp_old)``,
    ``l = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + kl_coef * k3(logp, logp_ref)``,
    aggregated by :func:`masked_mean`. ``advantages`` is [B] (one per sequence).
    Metrics: policy loss, KL, the fraction of tokens whose ratio was clipped.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    policy = -torch.minimum(unclipped, clipped)
    kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    loss = masked_mean(policy + kl_coef * kl, mask, aggregation)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1).abs() > clip_eps).float(), mask, "token")
        metrics = {
            "policy": masked_mean(policy, mask, aggregation),
            "kl": masked_mean(kl, mask, "token"),
            "clip_fraction": clip_fraction,
        }
    return loss, metrics


def legacy_loss(
    logprobs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *, aggregation: str = "sequence"
) -> torch.Tensor:
    """Reward-weighted supervised learning (the seed system's ``--use-legacy``): ``-r * mean log pi``.

    >>> legacy_loss(torch.tensor([[-1.0, -3.0]]), torch.tensor([2.0]), torch.ones(1, 2))
    tensor(4.)
    """
    return masked_mean(-rewards[:, None] * logprobs, mask, aggregation)


def apo_loss(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *,
    beta: float = 0.1, aggregation: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """A*PO-style: ``-r * log pi + beta * KL(pi || ref)`` per token (k3 estimator)."""
    kl = kl_k3(logprobs, ref_logprobs)
    loss = masked_mean(-rewards[:, None] * logprobs + beta * kl, mask, aggregation)
    return loss, {"kl": masked_mean(kl.detach(), mask, "token")}


def value_loss(values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the value head against its targets (final outcome or MCTS Q).

    >>> value_loss(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    tensor(0.1250)
    """
    return (((values - targets) ** 2) * mask).sum() / mask.sum().clamp(min=1)


def visit_distillation_loss(
    candidate_logprobs: torch.Tensor, visit_probs: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """AlphaZero's policy target: cross-entropy between the MCTS root visit distribution and the
    student's distribution over the same K candidates.

    ``q_k = softmax over valid k of log pi(candidate_k)`` (sequence log-probs), loss
    ``= -sum_k visits_k * log q_k``, averaged over states; minimal (the entropy of the visits) when
    ``q`` equals the visit distribution. Shapes: [S, K].
    """
    masked = candidate_logprobs.masked_fill(~valid.bool(), float("-inf"))
    log_q = torch.log_softmax(masked, dim=-1)
    log_q = torch.where(valid.bool(), log_q, torch.zeros_like(log_q))
    return -(visit_probs * log_q).sum(-1).mean()
