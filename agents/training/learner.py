"""The learner: batches of completed responses -> one optimizer step on the student.

Losses are chosen by name from :data:`agents.training.losses.POLICY_LOSSES` (``grpo`` / ``legacy`` /
``apo``), plus the value regression and, optionally, distillation of MCTS visit counts. A step splits its batch into
micro-batches, accumulates their gradients, clips the global norm and steps AdamW.

Every term of a step's loss is a sum over its samples (or tokens, value positions, distilled states)
divided by a count taken over the *whole* batch, so the micro-batches' shares add up to the batch's
loss whatever the micro-batch size. That is also what makes data parallelism exact: with a
:class:`Collective` (:mod:`agents.distributed.ddp`) each of W processes is handed the same batch,
computes the advantages and counts on all of it, runs forward and backward on its contiguous slice
(:func:`shard`) only, and the summed gradients are the single-process gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from agents.student import Student
from agents.training import losses
from agents.training.samples import DistillSample, Logprobs, Sample
from azgym.config import check_fields, option, raise_problems
from azgym.lm.modes import module_mode


@dataclass(frozen=True)
class LearnerConfig:
    """The learner: policy loss, optimiser and the value and distillation terms (saved with checkpoints)."""

    loss: str = option(
        "grpo",
        "policy loss: grpo (group advantages, clipped ratio, KL), legacy (reward-weighted "
        "SL) or apo (A*PO-style -r log pi + beta KL)",
        choices=tuple(losses.POLICY_LOSSES),
    )
    learning_rate: float = option(5e-5, "AdamW learning rate (LoRA-sized; picked by the add2 sweep in BENCHMARKS.md)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(0, "learner steps of linear learning-rate warm-up")
    micro_batch_size: int = option(8, "sequences per forward pass; a step accumulates over its micro-batches")
    max_grad_norm: float = option(1.0, "global gradient-norm clip")
    clip_eps: float = option(0.2, "PPO ratio clip epsilon (the lower bound: ratios below 1 - clip_eps are clipped)")
    clip_eps_high: float | None = option(
        0.28, "upper ratio clip 1 + clip_eps_high (DAPO's clip-higher; 0.28); none: clip_eps, symmetric"
    )
    kl_coef: float = option(0.01, "GRPO KL penalty weight (0 skips the reference pass)")
    adv_clip: float = option(3.0, "advantages are clipped to [-adv_clip, adv_clip]")
    normalize_std: bool = option(
        False, "divide group advantages by the group's std (GRPO, apo_normalize; off: Dr. GRPO)"
    )
    aggregation: str = option(
        "token",
        "loss average over a step: token (DAPO: every token weighs the same), "
        "sequence (GRPO: each sequence's mean, then the batch) or constant (Dr. GRPO: token "
        "sum / (sequences x max_completion_tokens))",
        choices=losses.AGGREGATIONS,
    )
    max_completion_tokens: int = option(
        0,
        "the constant of aggregation 'constant' (the response budget in "
        "tokens); 0: a run sets it to the env's max_tokens + 1",
    )
    drop_truncated: bool = option(
        False,
        "leave truncated responses out of the policy loss (they still count in "
        "their group's advantages and train the value head)",
    )
    apo_beta: float = option(0.1, "A*PO KL weight beta")
    apo_normalize: bool = option(
        False,
        "A*PO weighs log pi by the group advantage (reward - group mean, / std "
        "with --normalize-std, clipped to adv_clip) instead of the raw reward",
    )
    value_coef: float = option(0.5, "weight of the value-head loss")
    distill_coef: float = option(0.0, "weight of the MCTS visit-distillation loss (0: off)")
    update_ref_every: int = option(50, "learner steps between KL-reference refreshes (full fine-tuning only)")
    optimizer: str = option("adamw", "optimiser: adamw, or adamw8bit (bitsandbytes)", choices=("adamw", "adamw8bit"))

    def __post_init__(self):
        raise_problems(
            self,
            check_fields(
                self,
                {
                    **{
                        name: (getattr(self, name) > 0, "> 0")
                        for name in ("learning_rate", "max_grad_norm", "clip_eps", "adv_clip")
                    },
                    **{
                        name: (getattr(self, name) >= 0, ">= 0")
                        for name in (
                            "kl_coef",
                            "value_coef",
                            "distill_coef",
                            "weight_decay",
                            "apo_beta",
                            "warmup_steps",
                        )
                    },
                    "micro_batch_size": (self.micro_batch_size >= 1, ">= 1"),
                    "max_completion_tokens": (
                        self.max_completion_tokens >= 1
                        or (self.max_completion_tokens == 0 and self.aggregation != "constant"),
                        ">= 1 with aggregation constant, else >= 0",
                    ),
                    "clip_eps_high": (self.clip_eps_high is None or self.clip_eps_high > 0, "> 0 or none"),
                    "update_ref_every": (self.update_ref_every >= 1, ">= 1"),
                },
            ),
        )


class Collective(Protocol):
    """The processes that share every learner step (:class:`agents.distributed.ddp.ProcessGroup`)."""

    rank: int
    world_size: int

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every ``p.grad`` (None counts as zeros) by its sum over the processes."""

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order."""


def shard(n: int, rank: int, world_size: int) -> slice:
    """The contiguous slice of ``n`` items that process ``rank`` of ``world_size`` takes (sizes differ by <= 1).

    >>> [shard(7, r, 3) for r in range(3)]
    [slice(0, 2, None), slice(2, 4, None), slice(4, 7, None)]
    """
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


class Learner:
    """Owns the optimizer and scheduler of a :class:`~agents.student.Student`.

    With a ``collective`` of W > 1 processes, every process is handed the same batches and trains on its
    :func:`shard` of each; gradients are summed before the clip, so every process takes the same step.
    """

    def __init__(self, student: Student, config: LearnerConfig | None = None, collective: Collective | None = None):
        self.student = student
        self.config = config or LearnerConfig()
        self.collective = collective
        params = student.trainable_parameters()
        if not params:
            raise ValueError("the student has no trainable parameters")
        self.optimizer = _optimizer(params, self.config)
        warmup = self.config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.step_count = 0
        # per sample of the last step: the log-probs it computed for that sample (None where it carried them all);
        # the caller stores them with the sample's record (agents.alphazero.selfplay.train does, in the replay)
        self.last_logprobs: list[Logprobs | None] = []
        self._fresh: dict[int, Logprobs] = {}  # this process's share of last_logprobs, by sample index

    def step(self, samples: Sequence[Sample], distill: Sequence[DistillSample] = ()) -> dict[str, float]:
        """One optimizer step on ``samples`` (and ``distill``) in train mode; returns the metrics to log."""
        if not samples and not distill:
            raise ValueError("a learner step needs at least one sample")
        with module_mode(self.student, True):
            return self._step(samples, distill)

    def _step(self, samples: Sequence[Sample], distill: Sequence[DistillSample]) -> dict[str, float]:
        config = self.config
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        if not torch.isfinite(rewards).all():
            bad = [i for i, r in enumerate(rewards.tolist()) if not math.isfinite(r)]
            raise FloatingPointError(f"samples {bad[:5]} have non-finite rewards; drop them before training")
        group_ids = torch.tensor([hash(s.group) for s in samples], dtype=torch.long)
        advantages = (
            losses.group_advantages(rewards, group_ids, normalize_std=config.normalize_std, clip=config.adv_clip)
            if samples
            else rewards
        )
        totals: dict[str, float] = {}
        trained = [s for s in samples if not (config.drop_truncated and s.truncated)]
        scale = {  # the step's sequences and tokens: micro-batches add up to the loss of the whole batch
            "num_sequences": len(trained),
            "num_tokens": sum(len(s.completion_ids) for s in trained),
            "max_tokens": config.max_completion_tokens,
        }
        counts = {
            "values": sum(len(s.value_positions) for s in samples),  # the step's, for the metrics too
            "tokens": sum(len(s.completion_ids) for s in samples),
        }
        rank, world_size = (self.collective.rank, self.collective.world_size) if self.collective else (0, 1)
        mine = shard(len(samples), rank, world_size)
        self._fresh = {}
        for start in range(mine.start, mine.stop, config.micro_batch_size):
            part = slice(start, min(start + config.micro_batch_size, mine.stop))
            metrics = self._micro_step(samples[part], advantages[part], rewards[part], scale, counts, offset=start)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
        states = distill[shard(len(distill), rank, world_size)] if config.distill_coef > 0 else ()
        if states:  # this process's share of the mean over all the step's distilled states
            loss = config.distill_coef * self._distill_loss(states) * (len(states) / len(distill))
            loss.backward()
            totals["distill"] = float(loss.detach()) / config.distill_coef
        if world_size > 1:
            totals = self._synchronise(totals)
        self.last_logprobs = [self._fresh.get(i) for i in range(len(samples))]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.trainable_parameters(), config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"gradient norm is {float(grad_norm)} at step {self.step_count}: the update was skipped; lower the "
                f"learning rate ({config.learning_rate}) or check the rewards"
            )
        totals["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.step_count % config.update_ref_every == 0:
            self.student.refresh_reference()
        totals["grad_norm"] = float(grad_norm)
        totals["advantage_abs"] = float(advantages.abs().mean()) if samples else 0.0
        totals["trained_fraction"] = len(trained) / max(len(samples), 1)
        return totals

    def _micro_step(self, samples, advantages, rewards, scale, counts, offset: int = 0) -> dict[str, float]:
        """Forward and backward one micro-batch: the policy loss is its share of the step's (``scale``), the
        value loss its squared errors over the step's value positions (``counts``). Returns the metrics as this
        micro-batch's shares of the step's (the caller sums them): per-token means weigh by its share of the
        step's tokens, so neither the loss nor the metrics depend on how the batch is cut."""
        config, student = self.config, self.student
        sequences = [(s.prompt_ids, s.completion_ids) for s in samples]
        fwd, ids, mask = student.forward_batch(sequences, [s.value_positions for s in samples])
        old = self._old(samples, fwd.logprobs, offset)
        ref = (
            self._reference(samples, ids, mask, old, offset, fwd.first)
            if losses.NEEDS_REFERENCE[config.loss](config)
            else None
        )
        device = fwd.logprobs.device
        policy_mask = fwd.mask
        if config.drop_truncated:
            keep = torch.tensor([not s.truncated for s in samples], dtype=fwd.mask.dtype, device=device)
            policy_mask = fwd.mask * keep[:, None]
        advantages = self._token_advantages(samples, advantages.to(device), fwd.logprobs)
        policy, parts = losses.POLICY_LOSSES[config.loss](
            fwd, policy_mask, old, ref, advantages, rewards.to(device), config, scale
        )
        targets = torch.zeros_like(fwd.values)
        for i, s in enumerate(samples):
            if len(s.value_targets) != len(s.value_positions):
                raise ValueError(
                    f"sample {i}: {len(s.value_positions)} value positions but {len(s.value_targets)} targets"
                )
            targets[i, : len(s.value_targets)] = torch.tensor(s.value_targets, dtype=targets.dtype)
        has_values = bool(fwd.value_mask.sum() > 0)
        v_loss = (
            losses.value_loss(fwd.values, targets, fwd.value_mask, num_values=counts["values"])
            if has_values
            else fwd.values.sum() * 0
        )
        (policy + config.value_coef * v_loss).backward()
        tokens = float(fwd.mask.sum()) / max(counts["tokens"], 1)  # entropy: over every completion token
        trained = float(policy_mask.sum()) / max(scale["num_tokens"], 1)  # KL, clip fraction: the trained ones
        metrics = {
            "loss": float(policy.detach() + config.value_coef * v_loss.detach()),
            "entropy": float(fwd.entropy) * tokens,
        }
        metrics.update({k: float(v) if k == "policy" else float(v) * trained for k, v in parts.items()})
        if has_values:
            error = ((fwd.values.detach() - targets).abs() * fwd.value_mask).sum() / counts["values"]
            metrics.update({"value_loss": float(v_loss.detach()), "value_error": float(error)})
        return metrics

    def _synchronise(self, totals: dict[str, float]) -> dict[str, float]:
        """Sum the gradients and metrics of every process, and give each the log-probs all of them computed this
        step (each for its slice), so that every process stores the same with the samples."""
        self.collective.all_reduce_gradients(self.student.trainable_parameters())
        gathered = self.collective.all_gather_object((totals, self._fresh))
        self._fresh = {i: fresh for _, part in gathered for i, fresh in part.items()}
        summed: dict[str, float] = {}
        for part, _ in gathered:
            for k, v in part.items():
                summed[k] = summed.get(k, 0.0) + v
        return summed

    def _token_advantages(self, samples, advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[B] group advantages, or [B, T-1] per token where some sample carries its own (tree self-play),
        those clipped to ``adv_clip`` like the group's."""
        if all(s.advantages is None for s in samples):
            return advantages
        out = _fill(advantages[:, None].expand_as(like).clone(), samples, "advantages")
        return out.clamp(-self.config.adv_clip, self.config.adv_clip)

    def _old(self, samples, logprobs: torch.Tensor, offset: int) -> torch.Tensor:
        """PPO's old policy: the behaviour log-probs a sample carries (those of the first step that trained on it),
        else this step's own, which it hands back in :attr:`last_logprobs`. A replayed sample's ratio thus
        measures how far the student moved since it was first trained on, and the clip bounds it; a sample seen
        for the first time has ratio 1."""
        old = logprobs.detach().clone()
        for i, s in enumerate(samples):
            start = len(s.prompt_ids) - 1
            if s.old_logprobs is None:
                values = tuple(old[i, start : start + len(s.completion_ids)].tolist())
                self._fresh[offset + i] = Logprobs(values, None)
                continue
            if len(s.old_logprobs) != len(s.completion_ids):
                raise ValueError(
                    f"sample {offset + i}: {len(s.old_logprobs)} old_logprobs for {len(s.completion_ids)} "
                    "completion tokens"
                )
            old[i, start : start + len(s.old_logprobs)] = torch.tensor(s.old_logprobs, dtype=old.dtype)
        return old

    def _reference(self, samples, ids, mask, like: torch.Tensor, offset: int, first: int = 0) -> torch.Tensor:
        """Reference log-probs: those the samples carry (computed under the current reference), else computed for
        the micro-batch and handed back in :attr:`last_logprobs`. With LoRA the reference is the frozen base, so a
        sample's are computed once; with full fine-tuning they are recomputed after each refresh."""
        version = self.student.reference_version
        if all(s.ref_logprobs is not None and s.ref_version in (None, version) for s in samples):  # None: the caller's
            return _fill(torch.zeros_like(like), samples, "ref_logprobs")
        ref = self.student.reference_logprobs(ids, mask, first)
        for i, s in enumerate(samples):
            start = len(s.prompt_ids) - 1
            values = tuple(ref[i, start : start + len(s.completion_ids)].tolist())
            known = self._fresh.get(offset + i)
            self._fresh[offset + i] = Logprobs(known.old if known else None, values, version)
        return ref

    def _distill_loss(self, distill: Sequence[DistillSample]) -> torch.Tensor:
        k = max(len(d.candidates) for d in distill)
        pairs, where = [], []
        for i, d in enumerate(distill):
            if len(d.visit_probs) != len(d.candidates):
                raise ValueError(
                    f"distill sample {i}: {len(d.visit_probs)} visit probs for {len(d.candidates)} candidates"
                )
            for j, c in enumerate(d.candidates):
                if c:
                    pairs.append((d.state_ids, c))
                    where.append((i, j))
        fwd, _, _ = self.student.forward_batch(pairs)
        sequence_logprobs = (fwd.logprobs * fwd.mask).sum(-1)
        scores = torch.zeros(len(distill), k, device=sequence_logprobs.device)
        valid = torch.zeros(len(distill), k, dtype=torch.bool, device=scores.device)
        rows, cols = zip(*where, strict=True)
        scores = scores.index_put((torch.tensor(rows), torch.tensor(cols)), sequence_logprobs)
        valid[list(rows), list(cols)] = True
        visits = torch.zeros(len(distill), k, device=scores.device)
        for i, d in enumerate(distill):
            visits[i, : len(d.visit_probs)] = torch.tensor(d.visit_probs)
        return losses.visit_distillation_loss(scores, visits, valid)


def _fill(out: torch.Tensor, samples: Sequence[Sample], field_name: str) -> torch.Tensor:
    """Write each sample's per-completion-token values (``field_name``) into the [B, T-1] layout."""
    for i, s in enumerate(samples):
        values = getattr(s, field_name)
        if values is None:
            continue
        if len(values) != len(s.completion_ids):
            raise ValueError(f"sample {i}: {len(values)} {field_name} for {len(s.completion_ids)} completion tokens")
        start = len(s.prompt_ids) - 1
        out[i, start : start + len(values)] = torch.tensor(values, dtype=out.dtype)
    return out


def _optimizer(params, config: LearnerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("optimizer='adamw8bit' needs bitsandbytes: pip install 'azgym[quant]'") from err
        return bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
