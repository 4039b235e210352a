"""Each reward term, the presets and the guards against non-finite values."""

from __future__ import annotations

import math

import pytest

from azgym.rewards import (
    LOSS,
    WIN,
    RewardConfig,
    direction_bonus,
    hard_reward,
    outcome,
    outcome_preset,
    process_reward,
    seed_preset,
    step_reward,
)


def test_hard_reward_is_the_outcome_at_the_end_and_zero_before():
    assert [hard_reward(t, c) for t in (True, False) for c in (True, False)] == [1.0, -1.0, 0.0, 0.0]
    assert (WIN, LOSS) == (outcome(True), outcome(False)) == (1.0, -1.0)


def test_process_reward_is_mean_token_logprob():
    assert process_reward([-0.5, -1.5, -1.0]) == pytest.approx(-1.0)
    assert process_reward([]) == 0.0
    with pytest.raises(FloatingPointError, match="NaN"):
        process_reward([-1.0, math.nan])


def test_direction_bonus_and_unknown_label():
    config = seed_preset()
    assert direction_bonus("right", config) == 0.1
    assert direction_bonus("wrong", config) == -0.05
    with pytest.raises(ValueError, match="'right' or 'wrong'"):
        direction_bonus("maybe", config)


def test_pre_is_discounted_by_depth():
    terms = step_reward(seed_preset(), depth=3, pre=-2.0, label="wrong", ended=False, correct=False)
    assert terms["discounted_pre"] == pytest.approx(0.95**3 * -2.0)
    assert terms["total"] == pytest.approx(0.6 * 0.95**3 * -2.0 - 0.01 - 0.05)


def test_outcome_preset_is_hre_alone():
    config = outcome_preset()
    assert step_reward(config, depth=5, pre=-3.0, label="wrong", ended=True, correct=True)["total"] == 1.0
    assert step_reward(config, depth=5, pre=-3.0, label="right", ended=False, correct=False)["total"] == 0.0
    assert step_reward(config, depth=5, pre=-3.0, label="right", ended=True, correct=False)["total"] == -1.0


def test_non_finite_reward_is_an_error():
    with pytest.raises(FloatingPointError, match="not finite"):
        step_reward(seed_preset(), depth=0, pre=-math.inf, label="right", ended=False, correct=False)


@pytest.mark.parametrize("field", ["hre_weight", "pre_discount", "length_penalty"])
def test_config_rejects_nan(field):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**{field: math.nan})


def test_config_rejects_discount_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RewardConfig(pre_discount=1.5)
