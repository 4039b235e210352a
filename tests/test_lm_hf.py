"""The transformers backend on a tiny seeded Llama: seeding, stops, budgets, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from azgym.lm import HFBackend, LanguageModel
from azgym.lm.sampling import sample_rows


@pytest.fixture(scope="module")
def prompt(tiny_lm):
    return tiny_lm.chat_prompt([{"role": "user", "content": "What is 2 + 3?"}])


def test_implements_the_protocol(tiny_lm):
    assert isinstance(tiny_lm, LanguageModel)


def test_seeded_samples_do_not_depend_on_the_batch(tiny_lm, prompt):
    alone = tiny_lm.generate([prompt], n=3, max_tokens=6, seed=[5])[0]
    other = tiny_lm.chat_prompt([{"role": "user", "content": "A much longer, different question here?"}])
    batched = tiny_lm.generate([other, prompt], n=3, max_tokens=6, seed=[9, 5])[1]
    assert [g.token_ids for g in alone] == [g.token_ids for g in batched]
    assert len({g.token_ids for g in alone}) > 1  # the n samples differ from each other
    assert tiny_lm.generate([prompt], n=1, max_tokens=6, seed=[6])[0][0].token_ids != alone[0].token_ids


def test_sampler_draws_from_the_softmax_of_each_row():
    logits = torch.tensor([[2.0, 0.0, -1.0, -30.0, 1.0], [0.0, 0.0, 0.0, -torch.inf, 0.0]])
    draws = 20_000
    scaled = logits.repeat_interleave(draws, dim=0)
    generators = [torch.Generator().manual_seed(i) for i in range(len(scaled))]
    tokens = np.array(sample_rows(scaled, generators, [False] * len(scaled))[0]).reshape(2, draws)
    for row, want in zip(tokens, torch.softmax(logits.double(), dim=-1).numpy(), strict=True):
        freq = np.bincount(row, minlength=5) / draws
        assert np.abs(freq - want).max() < 4 * np.sqrt(0.25 / draws)  # each within four standard errors
    assert (tokens[1] != 3).all()  # a token of zero mass is never drawn
    skipped, logprobs = sample_rows(logits, [None, torch.Generator().manual_seed(0)], [False, True])
    assert skipped == [-1, 0]  # no generator: skipped; greedy: the argmax
    assert logprobs == [0.0, pytest.approx(float(torch.log_softmax(logits[1], dim=-1)[0]), abs=1e-6)]
    hot = sample_rows(logits[:1], [torch.Generator().manual_seed(1)], [False], torch.tensor([1e-6]))[0]
    assert hot == [0]  # a temperature near 0 draws the argmax


def test_greedy_matches_transformers_generate(tiny_lm, prompt):
    ours = tiny_lm.generate([prompt], max_tokens=8, temperature=0.0)[0][0]
    ids = torch.tensor([prompt])
    ref = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    expected = [t for t in ref[0, len(prompt) :].tolist() if t not in tiny_lm.eos_ids]
    assert list(ours.token_ids) == expected[: len(ours.token_ids)] and len(ours.token_ids) > 0


def test_left_padding_gives_the_same_greedy_text(tiny_lm, prompt):
    short = tiny_lm.chat_prompt([{"role": "user", "content": "Hi"}])
    alone = tiny_lm.generate([short], max_tokens=6, temperature=0.0)[0][0]
    padded = tiny_lm.generate([prompt, short], max_tokens=6, temperature=0.0)[1][0]
    assert alone.token_ids == padded.token_ids


def test_budgets_per_prompt_and_length_finish(tiny_lm, prompt):
    a, b = tiny_lm.generate([prompt, prompt], max_tokens=[2, 5], seed=[1, 1])
    assert a[0].finish_reason in ("length", "eos") and len(a[0].token_ids) <= 2
    assert len(b[0].token_ids) <= 5 and b[0].token_ids[:2] == a[0].token_ids[:2]


def test_stop_string_ends_the_sample_and_is_kept(tiny_lm, prompt):
    samples = tiny_lm.generate([prompt], n=4, max_tokens=12, seed=[3])[0]
    # pick a character the unconstrained samples produce, then stop on it
    text = next(g.text for g in samples if len(g.text) > 3)
    stop = text[2]
    stopped = tiny_lm.generate([prompt], n=4, max_tokens=12, seed=[3], stop=[stop])[0]
    target = next(s for s, g in zip(stopped, samples, strict=True) if g.text == text)
    assert target.finish_reason == "stop" and stop in target.text
    assert stop not in tiny_lm.decode(target.token_ids[:-1])


def test_stop_check_on_the_newest_text_cuts_where_the_whole_text_would(tiny_lm, prompt):
    """The sampler decodes only the last tokens to look for a stop string; for multi-character stops taken from
    long unconstrained samples, every sample ends at the first token whose whole decoded text holds one."""
    free = tiny_lm.generate([prompt], n=6, max_tokens=40, seed=[11])[0]
    stops = sorted({g.text[k : k + width] for g in free for k, width in ((9, 3), (20, 5)) if len(g.text) > k + width})
    assert stops
    stopped = tiny_lm.generate([prompt], n=6, max_tokens=40, seed=[11], stop=stops)[0]
    cut_somewhere = False
    for whole, cut in zip(free, stopped, strict=True):
        ends = [
            n
            for n in range(1, len(whole.token_ids) + 1)
            if any(s in tiny_lm.decode(whole.token_ids[:n]) for s in stops)
        ]
        expected = whole.token_ids[: ends[0]] if ends else whole.token_ids
        assert cut.token_ids == expected
        assert cut.finish_reason == ("stop" if ends else whole.finish_reason)
        cut_somewhere |= bool(ends) and ends[0] < len(whole.token_ids)
    assert cut_somewhere


def test_score_matches_sampling_logprobs(tiny_lm, prompt):
    sample = tiny_lm.generate([prompt], max_tokens=6, seed=[2])[0][0]
    (scored,) = tiny_lm.score([prompt], [sample.token_ids])
    np.testing.assert_allclose(scored, sample.logprobs, atol=1e-4)
    assert scored.dtype == np.float32 and (scored <= 0).all()


def test_score_is_batch_independent_and_checks_lengths(tiny_lm, prompt):
    (alone,) = tiny_lm.score([prompt], ["Five"])
    _, batched = tiny_lm.score(["Something much longer goes first here", prompt], ["x", "Five"])
    np.testing.assert_allclose(alone, batched, atol=1e-4)
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        tiny_lm.score([prompt, prompt], ["a"])


def test_bad_arguments(tiny_lm, prompt):
    with pytest.raises(ValueError, match="n must be at least 1"):
        tiny_lm.generate([prompt], n=0)
    with pytest.raises(ValueError, match="seed has 1 values for 2 prompts"):
        tiny_lm.generate([prompt, prompt], seed=[1])
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_lm.generate([[]])


def test_from_name_rejects_unknown_models():
    with pytest.raises(ValueError, match="unknown model"):
        HFBackend.from_name("no-such-model")


def _without_reuse(lm):
    return HFBackend(lm.model, lm.tokenizer, name="no-reuse", prefix_reuse=False)


def test_prefix_reuse_samples_and_scores_as_full_prefills_do(tiny_lm, prompt):
    plain = _without_reuse(tiny_lm)
    other = tiny_lm.chat_prompt([{"role": "user", "content": "And 7 + 8, please?"}])
    prompts, seeds = [prompt, other, prompt], [4, 5, 6]
    kwargs = dict(n=3, max_tokens=[3, 9, 6], temperature=[1.0, 0.0, 0.7], seed=seeds)
    reused, full = tiny_lm.generate(prompts, **kwargs), plain.generate(prompts, **kwargs)
    assert [[g.token_ids for g in gs] for gs in reused] == [[g.token_ids for g in gs] for gs in full]
    for gs, hs in zip(reused, full, strict=True):
        for g, h in zip(gs, hs, strict=True):
            np.testing.assert_allclose(g.logprobs, h.logprobs, atol=1e-4)
    conts = [list(reused[0][0].token_ids), [5, 6], list(reused[1][0].token_ids) or [7], [9]]
    ps = [prompt, prompt, other, prompt]
    for a, b in zip(tiny_lm.score(ps, conts), plain.score(ps, conts), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


def _fresh(lm, cache_bytes: int):
    """A backend on the same weights with an empty prefix cache (0: in-call reuse only)."""
    return HFBackend(lm.model, lm.tokenizer, name="fresh", prefix_cache_bytes=cache_bytes)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 24])
def test_prefix_reuse_prefills_a_shared_prompt_once(tiny_lm, prompt, cache_bytes):
    plain = _without_reuse(tiny_lm)
    tiny_lm = _fresh(tiny_lm, cache_bytes)
    for lm in (tiny_lm, plain):
        lm.stats.reset()
        lm.generate([prompt, prompt], n=2, max_tokens=4, seed=[1, 2])
    assert tiny_lm.stats.prefill == len(prompt)
    assert plain.stats.prefill == 4 * len(prompt)
    assert tiny_lm.stats.sampled == plain.stats.sampled > 0
    for lm in (tiny_lm, plain):
        lm.stats.reset()
        lm.clear_prefix_cache()
        lm.score([prompt] * 3, [[5, 6, 7], [8], [9, 10]])
    # with the cache every continuation token runs (its child state is cached whole), else all but the last;
    # with it, the prompt's last token runs in each continuation's row (one pass for the prompt's last token
    # and the continuations), the rest of the prompt once
    assert tiny_lm.stats.prefill == len(prompt) + (2 if cache_bytes else 0)
    assert tiny_lm.stats.scored == (6 if cache_bytes else 3)
    assert plain.stats.prefill == 3 * len(prompt) + 6


@pytest.mark.parametrize("cache_bytes", [0, 1 << 24])
def test_prompts_sharing_a_head_prefill_it_once(tiny_lm, prompt, cache_bytes):
    plain = _without_reuse(tiny_lm)
    tiny_lm = _fresh(tiny_lm, cache_bytes)
    other = tiny_lm.chat_prompt([{"role": "user", "content": "And 7 + 8, please?"}])
    shared = next(i for i, (a, b) in enumerate(zip(prompt, other, strict=False)) if a != b)
    assert shared >= 16  # the chat template's system turn
    for lm in (tiny_lm, plain):
        lm.stats.reset()
        lm.generate([prompt, other], max_tokens=3, temperature=0.0)
    assert tiny_lm.stats.prefill == plain.stats.prefill - shared
