"""The cross-call prefix cache: the radix tree on its own (exact contents, LRU, the byte budget), and
HFBackend with it against the uncached path on a tiny seeded Llama (same tokens, log-probs, values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.mcts import MCTSAgent
from agents.student.value import LMValueFunction, ValueHead
from azgym.env import ReasoningEnv
from azgym.lm import HFBackend
from azgym.lm.prefix_cache import PrefixCache, stack_batches, supports_prefix_cache

HEAD = 4  # head size of the toy keys and values below


def toy_kv(tokens):
    """[1, 2, 1, T, HEAD] keys and values that spell their tokens out (key = token, value = -token)."""
    t = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None].expand(1, 1, len(tokens), HEAD)
    return torch.stack([t, -t], dim=1).contiguous()


def put(cache, tokens, hidden=None):
    kv = toy_kv(tokens)
    hidden_fn = None if hidden is None else (lambda a, b: hidden[a:b])
    cache.insert(tokens, lambda a, b: kv[:, :, :, a:b], hidden_fn)


TOKEN_BYTES = 2 * HEAD * 4  # one token's keys and values (fp32)


def test_match_returns_the_longest_prefix_and_its_keys():
    cache = PrefixCache(1 << 20)
    put(cache, [1, 2, 3, 4, 5])
    put(cache, [1, 2, 3, 9, 9])  # splits the first edge after [1, 2, 3]
    assert cache.num_nodes == 3 and cache.bytes == 7 * TOKEN_BYTES == cache.stored_bytes()
    length, kv = cache.match([1, 2, 3, 9, 7])
    assert length == 4 and torch.equal(kv, toy_kv([1, 2, 3, 9]))
    assert cache.match([1, 2, 3, 4, 5], limit=4)[0] == 4
    assert cache.match([2, 1]) == (0, None)


def test_least_recently_used_leaf_goes_first_and_the_budget_holds():
    cache = PrefixCache(10 * TOKEN_BYTES)
    put(cache, [1, 2, 3, 4])
    put(cache, [5, 6, 7, 8])
    cache.match([1, 2, 3, 4])  # [1..4] is now the more recently used
    put(cache, [9, 10, 11, 12])  # needs room: [5..8] goes
    assert cache.match([5, 6, 7, 8])[0] == 0 and cache.match([1, 2, 3, 4])[0] == 4
    assert cache.evicted == 1 and cache.peak_bytes <= cache.budget_bytes
    put(cache, list(range(20, 40)))  # larger than the whole budget: not stored, nothing evicted for it
    assert cache.match(list(range(20, 40)))[0] == 0 and cache.evicted == 1
    assert cache.bytes == cache.stored_bytes() == 8 * TOKEN_BYTES


def test_hidden_states_are_kept_per_token_and_filled_in_later():
    cache = PrefixCache(1 << 20)
    put(cache, [1, 2, 3])  # keys only
    assert cache.hidden_at([1, 2, 3]) is None
    hidden = torch.arange(10, dtype=torch.float32)[:, None].expand(10, 2)
    put(cache, [1, 2, 3, 4, 5], hidden)  # fills in [1, 2, 3] and adds [4, 5], hidden states included
    assert cache.hidden_at([1, 2, 3]).tolist() == [2.0, 2.0] and cache.hidden_at([1, 2, 3, 4, 5]).tolist() == [4.0] * 2
    assert cache.hidden_at([1, 2, 3, 4, 6]) is None and cache.hidden_at([1, 2]).tolist() == [1.0, 1.0]
    assert cache.bytes == cache.stored_bytes() == 5 * TOKEN_BYTES + 5 * 2 * 4


def test_a_negative_budget_is_refused(tiny_lm):
    with pytest.raises(ValueError, match="prefix_cache_bytes must be >= 0"):
        HFBackend(tiny_lm.model, tiny_lm.tokenizer, prefix_cache_bytes=-1)


def test_sliding_window_models_get_no_prefix_cache(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8)  # fmt: skip
    model = MistralForCausalLM(config)
    assert not supports_prefix_cache(model)
    assert HFBackend(model, tokenizer, name="mistral").prefix_cache is None


# -- the backend --------------------------------------------------------------------------------------


@pytest.fixture
def pair(tiny_lm):
    """The same weights with a fresh prefix cache and with none (in-call reuse only)."""
    cached = HFBackend(tiny_lm.model, tiny_lm.tokenizer, name="cached", prefix_cache_bytes=1 << 24)
    plain = HFBackend(tiny_lm.model, tiny_lm.tokenizer, name="plain", prefix_cache_bytes=0)
    return cached, plain


def chat(lm, text):
    return lm.chat_prompt([{"role": "user", "content": text}])


def assert_same_generations(a, b):
    assert [[g.token_ids for g in gs] for gs in a] == [[g.token_ids for g in gs] for gs in b]
    for gs, hs in zip(a, b, strict=True):
        for g, h in zip(gs, hs, strict=True):
            np.testing.assert_allclose(g.logprobs, h.logprobs, atol=1e-4)


def test_rounds_of_a_search_give_what_the_uncached_path_gives(pair):
    cached, plain = pair
    first, second = chat(cached, "What is 2 + 3?"), chat(cached, "And 7 + 8, please?")
    states = [first, second]
    for round_index in range(3):  # propose, score under another prompt, value the children; then go deeper
        kwargs = dict(n=2, max_tokens=[5, 7], temperature=[1.0, 0.7], seed=[round_index, 9])
        a, b = cached.generate(states, **kwargs), plain.generate(states, **kwargs)
        assert_same_generations(a, b)
        prompts = [s for s in states for _ in range(2)]
        conts = [list(g.token_ids) or [7] for gs in a for g in gs]
        for x, y in zip(cached.score(prompts, conts), plain.score(prompts, conts), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4)
        children = [p + c for p, c in zip(prompts, conts, strict=True)]
        torch.testing.assert_close(cached.last_hidden(children), plain.last_hidden(children), atol=1e-4, rtol=0)
        states = [children[0], children[3]]
    assert cached.stats.reused > 0 and cached.stats.prefill < plain.stats.prefill / 2
    assert cached.stats.valued == 0 < plain.stats.valued  # every child's hidden state came from its scoring pass
    with torch.inference_mode():
        reference = cached.model(input_ids=torch.tensor([states[1]]), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(cached.last_hidden([states[1]])[0], reference[0, -1], atol=1e-4, rtol=0)


def test_a_later_call_runs_only_what_follows_the_cached_prefix(pair):
    cached, _ = pair
    prompt = chat(cached, "What is 2 + 3?")
    sample = cached.generate([prompt], max_tokens=6, seed=[1])[0][0]
    cached.stats.reset()
    cached.generate([prompt + list(sample.token_ids)], max_tokens=3, seed=[2])
    assert cached.stats.prefill == 1  # the sample's last token, sampled but never run
    assert cached.stats.reused == len(prompt) + len(sample.token_ids) - 1
    cached.stats.reset()
    cached.score([prompt], [list(sample.token_ids)])  # the prompt is cached: its last token runs, then the step
    assert cached.stats.prefill == 1 and cached.stats.scored == len(sample.token_ids)


@pytest.mark.parametrize("through_data", [False, True])  # True: as bitsandbytes' 8-bit optimizers write
def test_a_weight_change_drops_the_cache(pair, through_data):
    cached, plain = pair
    prompt = chat(cached, "What is 2 + 3?")
    kwargs = dict(n=2, max_tokens=6, seed=[3])
    cached.generate([prompt], **kwargs)
    assert cached.prefix_cache.bytes > 0
    layer = cached.model.model.layers[0].self_attn.k_proj.weight
    saved = layer.detach().clone()
    try:
        with torch.no_grad():
            (layer.data if through_data else layer).mul_(3.0)  # a learner step, as far as the cache can tell
        assert_same_generations(cached.generate([prompt], **kwargs), plain.generate([prompt], **kwargs))
        (x,), (y,) = cached.score([prompt], [[5, 6]]), plain.score([prompt], [[5, 6]])
        np.testing.assert_allclose(x, y, atol=1e-4)
    finally:
        with torch.no_grad():
            layer.copy_(saved)


def test_a_long_search_stays_within_a_small_budget(tiny_lm, gsm8k_problems):
    budget = 48 * 1024  # a few hundred tokens of the tiny model: the search evicts all along
    head = ValueHead(tiny_lm.model.config.hidden_size)
    torch.manual_seed(0)
    torch.nn.init.normal_(head.linear.weight, std=0.05)
    results = []
    for cache_bytes in (budget, 0):
        lm = HFBackend(tiny_lm.model, tiny_lm.tokenizer, name="lm", prefix_cache_bytes=cache_bytes)
        env = ReasoningEnv(gsm8k_problems[:3], model=lm, chunk_tokens=4, max_steps=4, max_tokens=16)
        states = []
        for i in range(3):
            env.reset(seed=i, options={"problem_index": i})
            states.append(env.get_state())
        result = MCTSAgent(LMValueFunction(lm, head), num_simulations=12, seed=0).search(env, states)
        results.append((result, lm))
    (cached, lm), (plain, _) = results
    np.testing.assert_array_equal(cached.visits, plain.visits)
    np.testing.assert_allclose(cached.tree.node_raw_value, plain.tree.node_raw_value, atol=1e-4)
    np.testing.assert_allclose(cached.tree.children_prior, plain.tree.children_prior, atol=1e-4)
    assert np.abs(cached.tree.node_raw_value).max() > 0  # the value head says something
    tree = lm.prefix_cache
    assert tree.evicted > 0 and lm.stats.reused > 0
    assert tree.peak_bytes <= budget and tree.bytes == tree.stored_bytes() <= budget


def test_a_learner_step_on_a_lora_student_refreshes_its_backend(tokenizer):
    from agents.student import Student, StudentConfig
    from agents.training.learner import Learner, LearnerConfig, Sample
    from helpers import tiny_llama

    torch.manual_seed(0)
    config = StudentConfig(model="tiny-llama", prefix_cache_mib=2)
    student = Student.from_config(config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    lm = student.backend()
    assert lm.prefix_cache.budget_bytes == 2 * 2**20
    prompt, step = chat(lm, "What is 2 + 3?"), [5, 6, 7]
    before = lm.score([prompt], [step])[0]
    learner = Learner(student, LearnerConfig(loss="legacy", learning_rate=1e-2))
    learner.step([Sample(tuple(prompt), tuple(step), 1.0, "a")])
    after = lm.score([prompt], [step])[0]
    fresh = student.backend(prefix_cache_bytes=0).score([prompt], [step])[0]
    np.testing.assert_allclose(after, fresh, atol=1e-4)
    assert np.abs(after - before).max() > 1e-3  # the step moved the policy: a stale cache would not show it
    with pytest.raises(ValueError, match="prefix_cache_mib"):
        StudentConfig(prefix_cache_mib=-1)


def test_scoring_in_length_buckets_gives_what_the_uncached_path_gives(pair):
    cached, plain = pair
    cached.max_batch_size = 3  # several batches, and rows of one prompt split among them
    first, second = chat(cached, "What is 2 + 3?"), chat(cached, "And 7 + 8, please?")
    conts = [[5] * 12, [8], [9, 10], [], [11] * 7, [12, 13, 14], [15] * 12, [16], [5] * 12]
    prompts = [first, second, first, second, [first[0]], first, second, second, first]  # a one-token prompt too
    scores = cached.score(prompts, conts)
    for x, y in zip(scores, plain.score(prompts, conts), strict=True):
        assert x.shape == y.shape and x.dtype == np.float32
        np.testing.assert_allclose(x, y, atol=1e-4)
    assert cached.stats.scored == sum(len(c) for c in conts[:-1])  # the repeated pair ran once
    cached.stats.reset()
    again = cached.score(prompts[::-1], conts[::-1])  # every pair was scored since the weights last changed
    assert cached.stats.scored == cached.stats.prefill == 0
    for x, y in zip(again[::-1], scores, strict=True):
        np.testing.assert_array_equal(x, y)
    cached.stats.reset()
    states = [p + c for p, c in zip(prompts, conts, strict=True)] + [first, second]  # children and parents
    torch.testing.assert_close(cached.last_hidden(states), plain.last_hidden(states), atol=1e-4, rtol=0)
    assert cached.stats.valued == 0  # their scoring passes left every hidden state in the cache


def test_length_buckets_cover_every_row_once_and_pay_off():
    from azgym.lm.hf_prefix import length_buckets

    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 40, size=rng.integers(1, 30)).tolist()
        max_rows, pass_tokens = int(rng.integers(1, 9)), int(rng.integers(0, 100))
        buckets = length_buckets(lengths, max_rows, pass_tokens)
        assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
        assert all(1 <= len(b) <= max_rows for b in buckets)
        chunks = [list(range(s, min(s + max_rows, len(lengths)))) for s in range(0, len(lengths), max_rows)]
        assert padded_cost(buckets, lengths, pass_tokens) <= padded_cost(chunks, lengths, pass_tokens)  # never worse
    assert length_buckets([3, 40, 2, 39], max_rows=4, pass_tokens=1000) == [[2, 0, 3, 1]]  # a pass costs too much
    assert length_buckets([3, 40, 2, 39], max_rows=4, pass_tokens=0) == [[2], [0], [3], [1]]  # passes are free


def padded_cost(split, lengths, pass_tokens):
    """Padded positions of batches run as split (rows x longest row each), plus ``pass_tokens`` a batch."""
    return sum(len(b) * max(lengths[i] for i in b) + pass_tokens for b in split)


def test_last_hidden_hook_sees_every_position_whatever_logits_are_kept(tiny_lm):
    from azgym.lm.prefix_cache import LastHidden

    ids = torch.tensor([chat(tiny_lm, "What is 2 + 3?")])
    with torch.inference_mode(), LastHidden(tiny_lm.model) as hidden:
        out = tiny_lm.model(input_ids=ids, logits_to_keep=1, output_hidden_states=True)
    assert out.logits.shape[1] == 1 and hidden.value.shape[1] == ids.shape[1]
    torch.testing.assert_close(hidden.value, out.hidden_states[-1])


def test_prompts_of_unlike_lengths_prefill_in_passes_of_their_own_and_sample_the_same(pair, monkeypatch):
    import azgym.lm.hf_prefix as hf_prefix

    cached, plain = pair
    stacked = []
    monkeypatch.setattr(hf_prefix, "stack_batches", lambda parts, config: stacked.append(len(parts)) or
                        stack_batches(parts, config))  # fmt: skip
    first = chat(cached, "What is 2 + 3?")
    sample = cached.generate([first], max_tokens=6, seed=[1])[0][0]
    long = chat(cached, "Some words to make a prompt that the cache has never seen, and long: 27 + 15?")
    prompts = [first + list(sample.token_ids), long, first + list(sample.token_ids)[:2], long[:-3]]
    kwargs = dict(n=2, max_tokens=[4, 6, 5, 3], temperature=[1.0, 0.7, 0.0, 1.0], seed=[5, 6, 7, 8])
    assert_same_generations(cached.generate(prompts, **kwargs), plain.generate(prompts, **kwargs))
    assert stacked and stacked[0] >= 2  # the cached rows and the long new prompts ran apart
