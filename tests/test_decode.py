"""The lean decoder: the same logits as transformers' forward step for step (float32: to float rounding), the
backend decoding through it in bfloat16 (samples' log-probs agree with scoring), a rebuild after the weights
change, and None for what it does not reproduce."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agents.student import Student, StudentConfig
from agents.training.learner import Learner, LearnerConfig
from agents.training.samples import Sample
from azgym.lm.blocked import BlockedLinear, Product, blocked_available
from azgym.lm.decode import LeanDecoder, lean_decoder
from azgym.lm.hf_prefix import cache_argument
from helpers import tiny_llama, tiny_qwen2

LOGPROB_TOLERANCE = 0.1  # bfloat16 against float32 (as tests/test_precision.py)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_lean_steps_match_the_models_forward_in_float32(tokenizer, build):
    model = build(len(tokenizer))
    rows, width, steps = 3, 6, 4
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (rows, width))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, :3] = 0  # left padding, as the backend's prefill leaves it
    mask[2, :1] = 0
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
    reference = copy.deepcopy(out.past_key_values)
    decoder = lean_decoder(model)
    assert isinstance(decoder, LeanDecoder)
    cache = decoder.start(out.past_key_values, mask, steps)
    position = position[:, -1:]
    for step in range(steps):
        token = torch.randint(5, 200, (rows,))
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        position = position + 1
        with torch.no_grad():
            want = model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=position,
                **{cache_argument(model): reference},
            )
        got = decoder.step(cache, token, mask, position)
        torch.testing.assert_close(got, want.logits[:, -1].float(), atol=1e-5, rtol=1e-5)
        assert cache.length == width + step + 1
    keys = cache.layers[1].keys
    torch.testing.assert_close(keys, reference.layers[1].keys, atol=1e-5, rtol=1e-5)  # the rows' keys, as the cache
    cache.batch_select_indices(torch.tensor([2, 0]))
    torch.testing.assert_close(cache.layers[1].keys, keys[[2, 0]])
    with pytest.raises(ValueError, match="the mask is"):
        decoder.start(out.past_key_values, mask, 1)  # a mask wider than the cache
    with pytest.raises(RuntimeError, match="step cache holds"):
        decoder.step(cache, token[:2], torch.cat([mask[[2, 0]], mask.new_ones(2, 1)], dim=1), position[:2] + 1)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_a_pass_of_several_tokens_matches_the_forward_in_float32(tokenizer, build):
    """On top of a cached prefix (left-padded; one row has none), a left-padded pass of new tokens: the kept
    logits, the final hidden states and the new keys as the forward's, at every real position."""
    from azgym.lm.prefix_cache import LastHidden

    model = build(len(tokenizer))
    torch.manual_seed(2)
    rows, width, new, keep = 3, 5, 4, 3
    ids = torch.randint(5, 200, (rows, width))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, :2] = 0
    mask[2] = 0  # nothing cached for this row
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    decoder = lean_decoder(model)
    cache = decoder.start(out.past_key_values, mask, new)
    tail = torch.randint(5, 200, (rows, new))
    tail_mask = torch.ones(rows, new, dtype=torch.long)
    tail_mask[1, :2] = 0  # left padding of the new tokens
    full = torch.cat([mask, tail_mask], dim=1)
    position = (full.cumsum(-1) - 1).clamp(min=0)[:, width:]
    with torch.no_grad(), LastHidden(model) as last:
        want = model(input_ids=tail, attention_mask=full, position_ids=position,
                     **{cache_argument(model): out.past_key_values})  # fmt: skip
    with pytest.raises(ValueError, match="keep must be 1..4, got 5"):
        decoder.run(cache, tail, full, position, new + 1)
    with pytest.raises(ValueError, match="the mask must be"):
        decoder.run(cache, tail, full[:, 1:], position, keep)
    logits, hidden = decoder.run(cache, tail, full, position, keep)
    real = tail_mask.bool()
    kept = real[:, -keep:]
    torch.testing.assert_close(logits[kept], want.logits[:, -keep:][kept].float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], last.value[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(hidden).all() and cache.length == width + new
    columns = full[1].nonzero().squeeze(-1)  # the forward appended its new keys to the cache it was given
    torch.testing.assert_close(cache.layers[1].keys[1][:, columns], out.past_key_values.layers[1].keys[1][:, columns])


def test_the_backend_scores_and_values_through_it_as_through_the_forward(tokenizer):
    """bfloat16 copy, prefix cache on: scores and hidden states of the lean passes agree with the forward's on the
    same weights (to bfloat16 rounding), cold and on top of what the cache holds."""
    student = Student.from_config(
        StudentConfig(model="tiny-llama", precision="bfloat16"), model=tiny_llama(len(tokenizer)), tokenizer=tokenizer
    )
    lean, plain = student.backend(), student.backend(lean_decode=False)
    prompts = [list(range(5, 25)), list(range(30, 41)), list(range(5, 18))]
    continuations = [(50, 51, 52), (60,), (70, 71)]
    for _ in range(2):  # the second time on top of the cached prompts
        got, want = lean.score(prompts, continuations), plain.score(prompts, continuations)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=LOGPROB_TOLERANCE)
        lean._scored.clear(), plain._scored.clear()
    assert isinstance(lean._lean, LeanDecoder) and plain._lean is False
    states = [p + list(c) for p, c in zip(prompts, continuations, strict=True)] + [list(range(90, 99))]
    got, want = lean.last_hidden(states).float(), plain.last_hidden(states).float()
    assert torch.allclose(got, want, atol=0.1 * want.abs().max().item())


def test_in_float32_the_backends_lean_passes_sample_score_and_value_as_its_forward(tokenizer, monkeypatch):
    """The whole lean path of the backend (prefill on top of the prefix cache into a cache with room, the steps,
    finished rows kept in the batch until half of it has finished, scoring, values), made to run in float32: the
    same seeded samples as the forward's, log-probs, scores and hidden states to float rounding."""
    from azgym.lm import HFBackend

    model = tiny_llama(len(tokenizer))
    plain, lean = HFBackend(model, tokenizer, name="tiny"), HFBackend(model, tokenizer, name="tiny")
    decoder = lean_decoder(model)
    monkeypatch.setattr(lean, "_decoder", lambda: decoder)
    prompts = [list(range(5, 25)), list(range(30, 41)), list(range(5, 18))]
    options = dict(n=2, max_tokens=[2, 9, 5], seed=[1, 2, 3], temperature=1.0)
    for _ in range(2):  # the second time on top of what the first left in the prefix cache
        want, got = plain.generate(prompts, **options), lean.generate(prompts, **options)
        for w, g in zip(sum(want, []), sum(got, []), strict=True):
            assert g.token_ids == w.token_ids and g.finish_reason == w.finish_reason
            np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-4)
    assert (lean.stats.sampled, lean.stats.generated) == (plain.stats.sampled, plain.stats.generated)
    continuations = [s.token_ids for s in sum(got, [])][::2]
    for w, g in zip(plain.score(prompts, continuations), lean.score(prompts, continuations), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)
    states = [p + list(c) for p, c in zip(prompts, continuations, strict=True)] + [list(range(90, 99))]
    torch.testing.assert_close(lean.last_hidden(states), plain.last_hidden(states), atol=1e-4, rtol=1e-4)


def test_what_the_decoder_does_not_reproduce_gets_none(tokenizer):
    model = tiny_llama(len(tokenizer))
    other = copy.deepcopy(model)
    other.config.model_type = "gpt2"
    assert lean_decoder(other) is None
    other = copy.deepcopy(model)
    other.config.use_sliding_window = True
    assert lean_decoder(other) is None
    student = Student.from_config(StudentConfig(model="tiny-llama"), model=model, tokenizer=tokenizer)
    assert lean_decoder(student.model) is None  # adapters unmerged: the decoder would drop them


@pytest.mark.skipif(not blocked_available(), reason="PyTorch built without oneDNN")
def test_the_blocked_product_is_the_plain_product():
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32, dtype=torch.bfloat16), torch.randn(48, dtype=torch.bfloat16)
    product = Product(weight, bias)
    assert product.blocked
    for rows in (1, 5, 8, 20):
        x = torch.randn(rows, 32, dtype=torch.bfloat16)
        torch.testing.assert_close(product(x), F.linear(x, weight, bias), atol=0, rtol=0)


def test_the_backend_decodes_through_it_and_rebuilds_it_after_a_step(tokenizer):
    torch.manual_seed(0)
    student = Student.from_config(
        StudentConfig(model="tiny-llama", precision="bfloat16"), model=tiny_llama(len(tokenizer)), tokenizer=tokenizer
    )
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    lean, plain = student.backend(), student.backend(lean_decode=False)
    exact = student.backend(precision="float32")
    prompts = [list(range(5, 25)), list(range(30, 41))]
    drawn = lean.generate(prompts, n=2, max_tokens=10, seed=[1, 2])
    assert isinstance(lean._lean, LeanDecoder)  # it decoded through the lean decoder
    blocked = [m for m in lean.runner.modules() if isinstance(m, BlockedLinear)]
    assert len(blocked) == (2 * 7 + 1 if blocked_available() else 0)  # the copy's projections and output layer
    for prompt, samples in zip(prompts, drawn, strict=True):
        for sample in samples:
            (want,) = exact.score([prompt], [sample.token_ids])
            np.testing.assert_allclose(sample.logprobs, want, atol=LOGPROB_TOLERANCE)
    plain.generate(prompts, max_tokens=4)
    assert plain._lean is False
    before = lean._lean
    samples = [Sample(tuple(prompts[0]), s.token_ids, float(i), "a") for i, s in enumerate(drawn[0])]
    Learner(student, LearnerConfig(learning_rate=5e-2)).step(samples)
    after = lean.generate(prompts[:1], max_tokens=10, seed=[3])[0][0]
    assert isinstance(lean._lean, LeanDecoder) and lean._lean is not before  # rebuilt from the new weights
    (want,) = exact.score(prompts[:1], [after.token_ids])
    np.testing.assert_allclose(after.logprobs, want, atol=LOGPROB_TOLERANCE)  # the new weights, not the old


def test_the_decode_benchmark_times_both_steps_on_the_same_weights(tokenizer):
    from azgym.lm.precision import InferenceCopy
    from azgym_bench.decode import time_batch

    model = InferenceCopy(tiny_llama(len(tokenizer)), torch.bfloat16).model
    forward, lean, diff, agree = time_batch(model, lean_decoder(model), rows=3, context=5, repeats=1)
    assert forward > 0 and lean > 0 and diff < 0.1 and 0 <= agree <= 1


def test_the_inference_copy_keeps_rotary_frequencies_in_float32(tokenizer):
    from azgym.lm.precision import InferenceCopy

    model = tiny_llama(len(tokenizer))
    copy_ = InferenceCopy(model, torch.bfloat16).model
    frequencies = copy_.model.rotary_emb.inv_freq
    assert frequencies.dtype == torch.float32 and torch.equal(frequencies, model.model.rotary_emb.inv_freq)
    assert next(copy_.parameters()).dtype == torch.bfloat16
