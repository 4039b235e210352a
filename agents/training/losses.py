"""Losses: pure tensor functions, each docstring giving its formula.

Shapes: B sequences, T token positions. ``mask`` is 1 on the completion tokens being trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def group_advantages(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    *,
    normalize_std: bool = True,
    clip: float | None = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
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


def per_token(weights: torch.Tensor) -> torch.Tensor:
    """[B] per-sequence weights as [B, 1] (broadcast over tokens); [B, T] per-token ones as they are."""
    return weights[:, None] if weights.dim() == 1 else weights


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


AGGREGATIONS = ("sequence", "token", "constant")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str,
    *,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """This batch's share of a loss averaged over a whole step (which may span several micro-batches).

    With ``l_it`` the per-token loss, ``N`` the step's sequences and ``M`` its masked tokens:

    - ``"sequence"`` (GRPO): ``sum_i mean_t l_it / N``, each sequence weighs the same whatever its length;
    - ``"token"`` (DAPO): ``sum_it l_it / M``, each token weighs the same;
    - ``"constant"`` (Dr. GRPO): ``sum_it l_it / (N * max_tokens)``, no length normalisation at all.

    ``num_sequences`` / ``num_tokens`` default to this batch's own, so on a whole batch "token" and
    "sequence" equal :func:`masked_mean`. Summing the shares of all micro-batches gives the step's loss.

    >>> l, m = torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> [float(aggregate(l, m, a, max_tokens=4)) for a in AGGREGATIONS]
    [2.0, 2.0, 0.75]
    """
    summed = (values * mask).sum(-1)
    n = num_sequences if num_sequences is not None else values.shape[0]
    if aggregation == "sequence":
        return (summed / mask.sum(-1).clamp(min=1)).sum() / max(n, 1)
    if aggregation == "token":
        tokens = num_tokens if num_tokens is not None else mask.sum()
        return summed.sum() / max(float(tokens), 1.0)
    if aggregation == "constant":
        if max_tokens is None or max_tokens < 1:
            raise ValueError("aggregation 'constant' (Dr. GRPO) needs max_tokens >= 1, the completion budget")
        return summed.sum() / (max(n, 1) * max_tokens)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    kl_coef: float = 0.01,
    aggregation: str = "token",
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: the PPO clipped objective with group advantages, plus a KL penalty to the reference.

    Per token: ``rho = exp(logp - logp_old)``,
    ``l = -min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A) + kl_coef * k3(logp, logp_ref)``
    (``eps_high = clip_eps_high``, DAPO's clip-higher, or ``clip_eps`` when None), aggregated by
    :func:`aggregate` (``sequence`` GRPO, ``token`` DAPO, ``constant`` Dr. GRPO). ``advantages``
    is [B] (one per sequence) or [B, T] (one per token: tree self-play's step advantages). Metrics:
    policy loss, KL, the fraction of tokens whose ratio was clipped.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs)
    adv = per_token(advantages)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + eps_high) * adv
    policy = -torch.minimum(unclipped, clipped)
    kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    scale = {"num_sequences": num_sequences, "num_tokens": num_tokens, "max_tokens": max_tokens}
    loss = aggregate(policy + kl_coef * kl, mask, aggregation, **scale)
    with torch.no_grad():
        outside = (ratio < 1 - clip_eps) | (ratio > 1 + eps_high)
        metrics = {
            "policy": aggregate(policy, mask, aggregation, **scale),
            "kl": masked_mean(kl, mask, "token"),
            "clip_fraction": masked_mean(outside.float(), mask, "token"),
        }
    return loss, metrics


def legacy_loss(
    logprobs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, *, aggregation: str = "sequence", **scale
) -> torch.Tensor:
    """Reward-weighted supervised learning (the seed system's ``--use-legacy``): ``-r * mean log pi``.

    ``aggregation`` and ``scale`` (num_sequences, num_tokens, max_tokens) as in :func:`aggregate`.

    >>> legacy_loss(torch.tensor([[-1.0, -3.0]]), torch.tensor([2.0]), torch.ones(1, 2))
    tensor(4.)
    """
    return aggregate(-per_token(rewards) * logprobs, mask, aggregation, **scale)


def apo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.1,
    aggregation: str = "sequence",
    **scale,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A*PO-style: ``-r * log pi + beta * KL(pi || ref)`` per token (k3 estimator), aggregated by :func:`aggregate`.

    ``rewards`` [B] weigh each sequence: the raw rewards, or (A*PO's advantage normalisation) the
    group advantages of :func:`group_advantages`, which the learner passes with ``apo_normalize``.

    >>> logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
    >>> float(apo_loss(logp, logp, torch.tensor([1.0, -1.0]), torch.ones(2, 2))[0])  # (2 + -2) / 2; KL 0
    0.0
    """
    kl = kl_k3(logprobs, ref_logprobs)
    loss = aggregate(-per_token(rewards) * logprobs + beta * kl, mask, aggregation, **scale)
    return loss, {"kl": masked_mean(kl.detach(), mask, "token")}


def value_loss(
    values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, num_values: float | None = None
) -> torch.Tensor:
    """Mean squared error of the value head against its targets (final outcome or MCTS Q).

    The squared errors are summed over the masked positions and divided by ``num_values``, the step's
    value positions (default: this batch's), so micro-batches' shares add up to the step's mean.

    >>> value_loss(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    tensor(0.1250)
    >>> value_loss(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), num_values=5)
    tensor(0.0500)
    """
    count = mask.sum().clamp(min=1) if num_values is None else max(float(num_values), 1.0)
    return (((values - targets) ** 2) * mask).sum() / count


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


# -- the learner's policy objectives by name: each takes the forward pass, the mask, old and reference
# log-probs, advantages, rewards, the LearnerConfig and the normalisation ``scale``; returns (loss, stats)


def _grpo(fwd, mask, old, ref, advantages, rewards, config, scale):
    return grpo_loss(
        fwd.logprobs,
        old,
        ref,
        advantages,
        mask,
        clip_eps=config.clip_eps,
        clip_eps_high=config.clip_eps_high,
        kl_coef=config.kl_coef,
        aggregation=config.aggregation,
        **scale,
    )


def _legacy(fwd, mask, old, ref, advantages, rewards, config, scale):
    return legacy_loss(fwd.logprobs, rewards, mask, aggregation=config.aggregation, **scale), {}


def _apo(fwd, mask, old, ref, advantages, rewards, config, scale):
    weights = advantages if config.apo_normalize else rewards  # A*PO's advantage normalisation, when asked
    return apo_loss(fwd.logprobs, ref, weights, mask, beta=config.apo_beta, aggregation=config.aggregation, **scale)


POLICY_LOSSES: dict[str, Callable] = {"grpo": _grpo, "legacy": _legacy, "apo": _apo}
NEEDS_REFERENCE = {"grpo": lambda c: c.kl_coef > 0, "legacy": lambda c: False, "apo": lambda c: True}
