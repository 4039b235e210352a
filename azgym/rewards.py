"""Rewards: the value scale, pure functions of one step, and the presets that weight them.

The value scale (one for everything that adds returns: terminal rewards, tree backups, value-head
targets and learner rewards): an episode's outcome is ``WIN = +1`` when it ends with the correct
answer and ``LOSS = -1`` when it ends any other way (a wrong answer, no answer, truncated). The
value head (tanh) predicts the expected outcome of a state, in the same ``[-1, 1]``, so a wrong
final answer is never worth more than a live state the head expects to fail.

Seed preset (the system this project grew from), per step ``t`` (0-based depth of the step):

    r_t = w_hre * HRE_t + w_pre * gamma**t * PRE_t - length_penalty + bonus_t

- HRE_t (hard reward, the outcome on the value scale): ``WIN`` when the episode ends at step t with
  the correct final answer, ``LOSS`` when it ends at step t otherwise (wrong, unmarked or truncated),
  0 on a step that does not end it. With ``answer="flexible"`` the last number of the response
  counts as its answer (for curricula whose base model rarely writes the answer marker; the strict
  default, GSM8K's convention, needs the ``#### `` marker).
- PRE_t (process reward): mean token log-prob of the step's text under the scoring model and the
  plain solve prompt (a negative log-perplexity, <= 0). Discounting by ``gamma**t`` makes the
  episode's PRE sum the discounted accumulation ``sum_t gamma**t * PRE_t`` (gamma = 0.95).
- length_penalty: 0.01 per step, so an episode of depth d pays 0.01 * d.
- bonus_t: +0.1 for a step proposed as "right", -0.05 for one proposed as "wrong".
- Weights: w_hre = 0.4, w_pre = 0.6.

The shaping terms (PRE, length, direction) are edge rewards on the value scale: they add to the
outcome along the path, and a search backs up their sum (so the seed preset's returns can leave
[-1, 1] by the shaping's size; the value head clips at the ends).

Outcome preset: HRE alone (w_hre = 1, everything else 0): the return is exactly the outcome, +1 or
-1, what AlphaZero-style value learning wants.

Partial preset: the outcome preset with ``credit="partial"``: HRE at the end is the task's partial
credit ``c`` in [0, 1] (``task.partial_credit(response, gold)``, Countdown's score) mapped onto the
value scale, ``LOSS + (WIN - LOSS) * c`` (an exact solution +1, nothing right -1, credit 0.3 gives
-0.4), instead of +1 / -1. Only tasks that define ``partial_credit`` take it (arithmetic and GSM8K do
not). An episode still counts as *solved* only for an exact solution (the grade's ``correct``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

WIN = 1.0  # outcome of an episode that ends with the correct answer
LOSS = -1.0  # outcome of an episode that ends any other way
CREDITS = ("binary", "partial")  # how an ended episode's outcome is read (RewardConfig.credit)


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms. Every field is a plain float, documented above."""

    hre_weight: float = 0.4  # weight of the final-answer reward (HRE)
    pre_weight: float = 0.6  # weight of the step log-prob reward (PRE)
    pre_discount: float = 0.95  # gamma: PRE of step t is discounted by gamma**t
    length_penalty: float = 0.01  # paid every step
    right_bonus: float = 0.1  # added for a step proposed as "right"
    wrong_penalty: float = 0.05  # subtracted for a step proposed as "wrong"
    answer: str = "strict"  # "strict": the '#### ' marker; "flexible": the last number of the response
    credit: str = "binary"  # HRE at the end: "binary" (WIN or LOSS) or "partial" (the task's partial credit)

    def __post_init__(self):
        if self.answer not in ("strict", "flexible"):
            raise ValueError(f"RewardConfig.answer must be 'strict' or 'flexible', got {self.answer!r}")
        if self.credit not in CREDITS:
            raise ValueError(f"RewardConfig.credit must be 'binary' or 'partial', got {self.credit!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("answer", "credit"):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RewardConfig.{f.name} must be a finite number, got {value!r}")
        if not 0.0 <= self.pre_discount <= 1.0:
            raise ValueError(f"RewardConfig.pre_discount must lie in [0, 1], got {self.pre_discount}")


def seed_preset() -> RewardConfig:
    """HRE + discounted PRE + length penalty + direction bonus, weighted 0.4 / 0.6."""
    return RewardConfig()


def outcome_preset() -> RewardConfig:
    """Only the outcome counts: WIN (+1) for a correct final answer, LOSS (-1) for any other end."""
    return RewardConfig(hre_weight=1.0, pre_weight=0.0, length_penalty=0.0, right_bonus=0.0, wrong_penalty=0.0)


def partial_preset() -> RewardConfig:
    """The outcome preset paying the task's partial credit: ``LOSS + (WIN - LOSS) * credit`` at the end."""
    return replace(outcome_preset(), credit="partial")


REWARD_PRESETS = {"seed": seed_preset, "outcome": outcome_preset, "partial": partial_preset}


def resolve_rewards(rewards: str | RewardConfig, answer: str | None = None) -> RewardConfig:
    """A preset by name or a ready config, with its answer rule replaced when ``answer`` is given."""
    if isinstance(rewards, RewardConfig):
        config = rewards
    elif rewards in REWARD_PRESETS:
        config = REWARD_PRESETS[rewards]()
    else:
        raise ValueError(
            f"unknown reward preset {rewards!r}; choose one of {sorted(REWARD_PRESETS)} or pass a RewardConfig"
        )
    return config if answer is None else replace(config, answer=answer)


def outcome(correct: bool) -> float:
    """An ended episode's outcome on the value scale.

    >>> outcome(True), outcome(False)
    (1.0, -1.0)
    """
    return WIN if correct else LOSS


def partial_outcome(credit: float) -> float:
    """A partial credit in [0, 1] on the value scale: ``LOSS + (WIN - LOSS) * credit``.

    >>> partial_outcome(1.0), partial_outcome(0.0), round(partial_outcome(0.3), 6)
    (1.0, -1.0, -0.4)
    """
    if not 0.0 <= credit <= 1.0:
        raise ValueError(f"a partial credit must lie in [0, 1], got {credit!r}")
    return LOSS + (WIN - LOSS) * credit


def hard_reward(ended: bool, correct: bool, credit: float | None = None) -> float:
    """HRE: the outcome for a step that ends the episode, 0.0 for one that does not. With a partial
    ``credit`` the outcome is :func:`partial_outcome` of it rather than WIN or LOSS.

    >>> hard_reward(True, True), hard_reward(True, False), hard_reward(False, True)
    (1.0, -1.0, 0.0)
    >>> hard_reward(True, False, credit=0.75)
    0.5
    """
    if not ended:
        return 0.0
    return outcome(correct) if credit is None else partial_outcome(credit)


def process_reward(token_logprobs) -> float:
    """PRE: mean token log-prob of a step (0.0 for an empty step).

    >>> process_reward([-1.0, -3.0])
    -2.0
    >>> process_reward([])
    0.0
    """
    values = [float(x) for x in token_logprobs]
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    if math.isnan(mean):
        raise FloatingPointError(
            "a step's log-probs contain NaN: the scoring model produced invalid logits "
            "(check its dtype and weights; fp16 on CPU is a common cause)"
        )
    return mean


def inverse_perplexity(token_logprobs) -> float:
    """``exp(mean token log-prob)`` = 1 / perplexity, in (0, 1]: 1 for a response the scoring model
    finds certain, toward 0 for an unlikely one (0.0 for an empty response). The perplexity reward of
    the verifiers adapter (``azgym_verifiers``): ``exp(PRE)`` of the whole response.

    >>> round(inverse_perplexity([-0.5, -0.5]), 6)
    0.606531
    >>> inverse_perplexity([]), inverse_perplexity([0.0])
    (0.0, 1.0)
    """
    values = list(token_logprobs)
    return math.exp(process_reward(values)) if values else 0.0


def direction_bonus(label: str, config: RewardConfig) -> float:
    """+right_bonus for a "right" step, -wrong_penalty for a "wrong" one.

    >>> direction_bonus("right", seed_preset()), direction_bonus("wrong", seed_preset())
    (0.1, -0.05)
    """
    if label == "right":
        return config.right_bonus
    if label == "wrong":
        return -config.wrong_penalty
    raise ValueError(f"a candidate's label must be 'right' or 'wrong', got {label!r}")


def step_reward(
    config: RewardConfig,
    *,
    depth: int,
    pre: float,
    label: str,
    ended: bool,
    correct: bool,
    credit: float | None = None,
) -> dict[str, float]:
    """Every term of one step's reward, and their weighted sum under ``"total"``.

    ``depth`` is the 0-based index of this step in the episode; ``ended``: the step terminates or
    truncates the episode; ``correct``: its final answer is right (under ``config.answer``);
    ``credit``: the response's partial credit in [0, 1], the outcome when ``config.credit`` is
    ``"partial"`` (required then, for a step that ends the episode).

    >>> terms = step_reward(seed_preset(), depth=0, pre=-1.0, label="right", ended=True, correct=True)
    >>> round(terms["total"], 6)  # 0.4*1 + 0.6*(-1) - 0.01 + 0.1
    -0.11
    >>> step_reward(outcome_preset(), depth=3, pre=-2.0, label="wrong", ended=True, correct=False)["total"]
    -1.0
    """
    if config.credit == "partial" and ended and credit is None:
        raise ValueError("RewardConfig.credit is 'partial': an ending step needs its partial credit")
    hre = hard_reward(ended, correct, credit if config.credit == "partial" else None)
    discounted_pre = config.pre_discount**depth * pre
    terms = {
        "hre": hre,
        "pre": pre,
        "discounted_pre": discounted_pre,
        "length": -config.length_penalty,
        "direction": direction_bonus(label, config),
    }
    total = config.hre_weight * hre + config.pre_weight * discounted_pre + terms["length"] + terms["direction"]
    if not math.isfinite(total):
        raise FloatingPointError(f"step reward is not finite ({terms}); the scoring model returned -inf or NaN")
    terms["total"] = total
    return terms
