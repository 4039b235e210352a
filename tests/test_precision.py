"""bfloat16 where the hardware has it: the inference copy (LoRA merged, refreshed), the learner's autocast, the
float32 fallback, and bfloat16 against float32 on a tiny model within stated tolerances."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from agents.student import Student, StudentConfig
from agents.student import model as student_module
from agents.training.learner import Learner, LearnerConfig
from agents.training.samples import Sample
from azgym.lm import precision as precision_module
from azgym.lm.precision import FrozenCasts, InferenceCopy, inference_copy, resolve
from helpers import tiny_llama

# bfloat16 keeps 8 bits of mantissa: a log-prob of a tiny model's near-uniform ~11-nat distribution moves by a few
# hundredths, a loss by a few parts in a thousand
LOGPROB_TOLERANCE = 0.1
LOSS_TOLERANCE = 0.02

SAMPLES = [
    Sample((5, 6, 7), (8, 9, 10), 1.0, "a", value_positions=(0, 2), value_targets=(0.5, 1.0)),
    Sample((5, 6, 7), (11, 12), 0.0, "a", value_positions=(1,), value_targets=(-1.0,)),
    Sample((20, 21), (22, 23, 24, 25), 1.0, "b"),
    Sample((20, 21), (26,), 0.0, "b"),
]


def student_of(tokenizer, precision: str, seed: int = 0) -> Student:
    model = tiny_llama(len(tokenizer), seed=0)
    torch.manual_seed(seed)
    student = Student.from_config(
        StudentConfig(model="tiny-llama", precision=precision), model=model, tokenizer=tokenizer
    )
    with torch.no_grad():  # adapters that do something (LoRA's B starts at zero)
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return student


def test_resolve_names_and_the_fallback_without_native_bfloat16(monkeypatch, caplog):
    assert resolve("float32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        resolve("fp8", "cpu")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="azgym.lm.precision"):
        assert resolve("auto", "cpu") == torch.float32
    assert any("no native bfloat16" in r.getMessage() for r in caplog.records)  # a log line, not an error
    assert resolve("bfloat16", "cpu") == torch.bfloat16  # forced: taken, with a warning
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve("auto", "cpu") == torch.bfloat16


def test_the_copy_merges_lora_exactly_and_follows_weight_changes(tokenizer):
    student = student_of(tokenizer, "float32")
    model = student.model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    copy = InferenceCopy(model, torch.float64)  # float64: the merge itself is checked, not bfloat16's rounding
    assert not hasattr(copy.model, "peft_config") and all(p.dtype == torch.float64 for p in copy.model.parameters())
    with torch.no_grad():
        want = model(input_ids=ids).logits.double()
        torch.testing.assert_close(copy.model(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
        with model.disable_adapter():
            base = model(input_ids=ids).logits.double()
        assert not torch.allclose(base, want, atol=1e-3)  # the adapters matter, so the merge is tested
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.mul_(-1.5)
        copy.refresh()
        torch.testing.assert_close(
            copy.model(input_ids=ids).logits, model(input_ids=ids).logits.double(), atol=1e-4, rtol=1e-4
        )
    assert inference_copy(model, torch.float32) is None  # float32: the model runs as it is


def test_bfloat16_backend_agrees_with_float32_and_refreshes_after_a_step(tokenizer):
    student = student_of(tokenizer, "bfloat16")
    fast, exact = student.backend(), student.backend(precision="float32")
    assert fast.runner is not student.model and next(fast.runner.parameters()).dtype == torch.bfloat16
    assert exact.runner is student.model
    prompt = list(range(5, 25))
    sample = exact.generate([prompt], max_tokens=8, seed=[1])[0][0]
    (lo,) = fast.score([prompt], [sample.token_ids])
    (hi,) = exact.score([prompt], [sample.token_ids])
    assert lo.dtype == np.float32 and np.abs(lo - hi).max() < LOGPROB_TOLERANCE
    drawn = fast.generate([prompt], max_tokens=8, seed=[1])[0][0]
    np.testing.assert_allclose(drawn.logprobs, fast.score([prompt], [drawn.token_ids])[0], atol=LOGPROB_TOLERANCE)
    refreshes = fast._copy.refreshes
    Learner(student, LearnerConfig(learning_rate=1e-2)).step(SAMPLES)
    (after,) = fast.score([prompt], [sample.token_ids])
    assert fast._copy.refreshes == refreshes + 1  # the step changed the weights: the copy was rebuilt once
    (after_exact,) = exact.score([prompt], [sample.token_ids])
    assert np.abs(after - after_exact).max() < LOGPROB_TOLERANCE and np.abs(after - lo).max() > 1e-3


def test_learner_loss_in_bfloat16_matches_float32_and_keeps_float32_outputs(tokenizer):
    losses = {}
    for precision in ("float32", "bfloat16"):
        student = student_of(tokenizer, precision, seed=3)
        fwd, _, _ = student.forward_batch(
            [(s.prompt_ids, s.completion_ids) for s in SAMPLES], [s.value_positions for s in SAMPLES]
        )
        assert fwd.logprobs.dtype == torch.float32 and fwd.values.dtype == torch.float32
        losses[precision] = Learner(student, LearnerConfig(kl_coef=0.1)).step(SAMPLES)["loss"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=LOSS_TOLERANCE, abs=1e-3)


def test_logits_from_the_first_completion_position_give_the_same_logprobs(tokenizer):
    student = student_of(tokenizer, "float32").eval()  # no dropout: the two passes must see the same network
    fwd, ids, mask = student.forward_batch([((5, 6, 7, 8), (9, 10)), ((5, 6), (11, 12, 13))])
    assert fwd.first == 1
    full = student.model(input_ids=ids, attention_mask=mask).logits.float()
    want = torch.log_softmax(full[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(fwd.logprobs[:, 1:], want[:, 1:], atol=1e-5, rtol=1e-5)
    assert (fwd.logprobs[:, :1] == 0).all()


def test_frozen_casts_are_swapped_in_only_for_the_pass_and_remade_after_a_change(tokenizer):
    student = student_of(tokenizer, "bfloat16", seed=2)
    casts = student._frozen
    assert isinstance(casts, FrozenCasts) and len(casts) == 2 * 7  # every frozen projection, not the tied head
    layer = student.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    with casts.swapped():
        assert layer.weight.dtype == torch.bfloat16 and not isinstance(layer.weight, torch.nn.Parameter)
    assert layer.weight.dtype == torch.float32 and isinstance(layer.weight, torch.nn.Parameter)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an in-place change: the cast is remade
    with casts.swapped():
        remade = layer.weight
    torch.testing.assert_close(remade.float(), layer.weight.bfloat16().float())


def test_stored_casts_and_plain_attention_leave_the_learners_loss_as_it_was(tokenizer, monkeypatch):
    losses = []
    for frozen, eager in ((False, False), (True, True)):
        student = student_of(tokenizer, "bfloat16", seed=4)
        if not frozen:
            student._frozen = None
        monkeypatch.setattr(student_module, "EAGER_MAX_WIDTH", 10_000 if eager else 0)
        torch.manual_seed(7)  # the same dropout draws
        losses.append(Learner(student, LearnerConfig(kl_coef=0.1)).step(SAMPLES)["loss"])
        assert student.model.config._attn_implementation == "sdpa"  # restored after the pass
    assert losses[1] == pytest.approx(losses[0], rel=LOSS_TOLERANCE, abs=1e-3)


def test_gradient_checkpointing_keeps_the_attention_its_forward_ran(tokenizer):
    model = tiny_llama(len(tokenizer), seed=0)
    config = StudentConfig(model="tiny-llama", precision="bfloat16", gradient_checkpointing=True)
    student = Student.from_config(config, model=model, tokenizer=tokenizer)
    # the backward pass recomputes each layer after the learner's context has ended: same attention both times
    loss = Learner(student, LearnerConfig(kl_coef=0.1)).step(SAMPLES)["loss"]
    assert np.isfinite(loss)
