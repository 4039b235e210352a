"""Student + learner on a tiny seeded Llama: what changes, reproducibility, exact resume, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from agents.student import Student, StudentConfig
from agents.training.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from agents.training.learner import DistillSample, Learner, LearnerConfig, Sample
from agents.training.samples import carried
from helpers import tiny_llama

SAMPLES = [
    Sample((5, 6, 7), (8, 9, 10, 11), 1.0, "a", value_positions=(0, 4), value_targets=(0.0, 1.0)),
    Sample((5, 6, 7), (12, 13), 0.0, "a", value_positions=(0, 2), value_targets=(0.0, -1.0)),
    Sample((20, 21), (22, 23, 24), 1.0, "b", value_positions=(3,), value_targets=(1.0,)),
    Sample((20, 21), (25,), 0.5, "b"),
]
DISTILL = [DistillSample((5, 6, 7), ((8, 9), (12,), (30, 31, 32)), (0.6, 0.3, 0.1))]


def make_student(tokenizer, seed=0, base_seed=0, **config):
    """The same tiny base (``base_seed``) with adapters and value head initialised from ``seed``."""
    model = tiny_llama(len(tokenizer), seed=base_seed)
    torch.manual_seed(seed)
    return Student.from_config(StudentConfig(model="tiny-llama", **config), model=model, tokenizer=tokenizer)


def frozen_state(student):
    return {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}


def test_a_step_changes_trainable_parameters_and_nothing_frozen(tokenizer):
    student = make_student(tokenizer)
    learner = Learner(student, LearnerConfig(distill_coef=0.5))
    before, frozen = student.trainable_state(), frozen_state(student)
    metrics = learner.step(SAMPLES, DISTILL)
    after = student.trainable_state()
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert any("lora_B" in n for n in changed) and any("value_head" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in frozen_state(student).items())
    assert set(metrics) >= {"loss", "policy", "kl", "clip_fraction", "value_loss", "value_error", "entropy",
                            "grad_norm", "distill", "lr"}  # fmt: skip
    assert all(math.isfinite(v) for v in metrics.values())


def test_same_seed_same_parameters_after_several_steps(tokenizer):
    states = []
    for _ in range(2):
        student = make_student(tokenizer, seed=3)
        learner = Learner(student)
        for _ in range(3):
            learner.step(SAMPLES)
        states.append(student.trainable_state())
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    other = make_student(tokenizer, seed=4).trainable_state()
    assert any(not torch.equal(states[0][n], other[n]) for n in other if "lora_A" in n)


def test_save_load_then_next_step_matches_an_uninterrupted_run(tokenizer, tmp_path):
    student = make_student(tokenizer, seed=1)
    learner = Learner(student, LearnerConfig(warmup_steps=5))
    learner.step(SAMPLES)
    samples = carried(SAMPLES, learner.last_logprobs)  # the record keeps what the first step computed
    learner.step(samples)
    path = save_checkpoint(tmp_path, learner, extra={"iteration": 7})
    assert "old_logprobs" not in torch.load(path / "trainer.pt", weights_only=False)  # no sample cache
    learner.step(samples)
    uninterrupted = student.trainable_state()

    resumed_student = make_student(tokenizer, seed=99)  # other adapters: they must all come from disk
    resumed = Learner(resumed_student, LearnerConfig(warmup_steps=5))
    assert load_checkpoint(path, resumed) == {"iteration": 7}
    assert resumed.step_count == 2
    resumed.step(samples)
    state = resumed_student.trainable_state()
    assert all(torch.equal(uninterrupted[n], state[n]) for n in state)
    assert latest_checkpoint(tmp_path) == path


def test_full_fine_tuning_refreshes_its_reference(tokenizer):
    student = make_student(tokenizer, lora=False)
    learner = Learner(student, LearnerConfig(update_ref_every=2, learning_rate=1e-3))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    start = student.reference_logprobs(ids, mask)
    learner.step(SAMPLES)
    assert torch.equal(student.reference_logprobs(ids, mask), start)  # not yet refreshed
    learner.step(SAMPLES)
    fwd, _, _ = student.forward_batch([((5, 6, 7), (8, 9))])
    # the pass computed logits from the first completion position on (2): the log-probs from there agree
    torch.testing.assert_close(student.reference_logprobs(ids, mask)[:, 2:], fwd.logprobs.detach()[:, 2:])


def test_lora_reference_is_the_base_model(tokenizer):
    student = make_student(tokenizer)
    learner = Learner(student, LearnerConfig(learning_rate=1e-2))
    ids, mask = torch.tensor([[5, 6, 7, 8, 9]]), torch.ones(1, 5, dtype=torch.long)
    before = student.reference_logprobs(ids, mask)
    for _ in range(2):
        learner.step(SAMPLES)
    torch.testing.assert_close(student.reference_logprobs(ids, mask), before)
    fwd, _, _ = student.forward_batch([((5, 6, 7), (8, 9))])
    assert not torch.allclose(fwd.logprobs.detach(), before)  # the adapted policy moved away


def test_precomputed_reference_logprobs_skip_the_reference_pass(tokenizer):
    student = make_student(tokenizer)
    ref = student.reference_logprobs(torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), torch.ones(1, 7, dtype=torch.long))
    sample = Sample((5, 6, 7), (8, 9, 10, 11), 1.0, "a", ref_logprobs=tuple(ref[0, 2:].tolist()))
    calls = []
    student.reference_logprobs = lambda *a: calls.append(1)
    Learner(student).step([sample, Sample((5, 6, 7), (8,), 0.0, "a", ref_logprobs=(-1.0,))])
    assert calls == []


def test_reference_logprobs_are_computed_once_per_sample_with_lora(tokenizer):
    student = make_student(tokenizer)
    learner = Learner(student)
    calls = []
    original = student.reference_logprobs
    student.reference_logprobs = lambda *a: calls.append(1) or original(*a)
    samples = SAMPLES
    for _ in range(3):
        learner.step(samples)
        samples = carried(samples, learner.last_logprobs)  # as the replay keeps them with the episodes
    assert len(calls) == 1


@pytest.mark.parametrize("loss", ["legacy", "apo"])
def test_other_policy_losses_train(tokenizer, loss):
    student = make_student(tokenizer)
    before = student.trainable_state()
    metrics = Learner(student, LearnerConfig(loss=loss)).step(SAMPLES)
    assert math.isfinite(metrics["loss"])
    assert any(not torch.equal(before[n], p) for n, p in student.trainable_state().items() if "lora_B" in n)


def test_bad_input_is_named(tokenizer):
    learner = Learner(make_student(tokenizer))
    with pytest.raises(FloatingPointError, match="non-finite rewards"):
        learner.step([Sample((1, 2), (3,), float("nan"), "a")])
    with pytest.raises(ValueError, match="2 value positions but 1 targets"):
        learner.step([Sample((1, 2), (3, 4), 1.0, "a", value_positions=(0, 1), value_targets=(1.0,))])
    with pytest.raises(ValueError, match="at least one sample"):
        learner.step([])
    with pytest.raises(ValueError, match="loss: must be one of grpo, legacy, apo, got 'ppo'"):
        LearnerConfig(loss="ppo")
    with pytest.raises(ValueError, match="load_in_4bit"):
        StudentConfig(lora=False, load_in_4bit=True)


def test_corrupt_and_mismatched_checkpoints(tokenizer, tmp_path):
    learner = Learner(make_student(tokenizer))
    learner.step(SAMPLES)
    first = save_checkpoint(tmp_path, learner)
    learner.step(SAMPLES)
    second = save_checkpoint(tmp_path, learner)
    weights = second / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a crash mid-copy, a bad disk
    with pytest.raises(CorruptCheckpointError, match=r"corrupt.*moves it aside and continues from step-000001"):
        load_checkpoint(second, learner)
    other = Learner(make_student(tokenizer, lora_r=8))
    with pytest.raises(CheckpointError, match="lora_r: saved 32, now 8"):
        load_checkpoint(first, other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step-000099", learner)


def test_latest_checkpoint_skips_unfinished_writes(tokenizer, tmp_path):
    learner = Learner(make_student(tokenizer))
    done = save_checkpoint(tmp_path, learner)
    (tmp_path / ".step-000005.tmp-123").mkdir()  # a write that never finished
    (tmp_path / "step-000004").mkdir()  # no meta.json: incomplete
    assert latest_checkpoint(tmp_path) == done
    assert latest_checkpoint(tmp_path / "missing") is None


def test_four_bit_base_with_lora(tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    student = Student.from_config(StudentConfig(model=str(tmp_path / "tiny"), load_in_4bit=True))
    assert any("4bit" in type(m).__name__ for m in student.model.modules())
    before = student.trainable_state()
    Learner(student).step(SAMPLES)
    assert any(not torch.equal(before[n], p) for n, p in student.trainable_state().items() if "lora_B" in n)


def test_drop_truncated_leaves_them_out_of_the_policy_loss_only(tokenizer):
    """A truncated sample's policy gradient is dropped: with every sample truncated the LoRA adapters get no
    policy gradient, while the value head still trains; without drop_truncated they do."""
    truncated = [replace(s, truncated=True) for s in SAMPLES]
    for drop, adapters_move in ((True, False), (False, True)):
        student = make_student(tokenizer)
        config = LearnerConfig(drop_truncated=drop, kl_coef=0.0, value_coef=0.0)
        metrics = Learner(student, config).step(truncated)
        assert metrics["trained_fraction"] == (0.0 if drop else 1.0)
        assert metrics["policy"] == 0.0 if drop else metrics["policy"] != 0.0
        assert (metrics["grad_norm"] > 0) == adapters_move, (drop, metrics)


def test_replayed_samples_are_clipped_against_the_policy_that_first_trained_on_them(tokenizer):
    """The first step on a sample remembers its log-probs as PPO's old policy: ratio 1, nothing clipped. After
    big steps on it the ratio leaves [1 - eps, 1 + eps] and the clip fraction rises."""
    learner = Learner(make_student(tokenizer), LearnerConfig(learning_rate=5e-2, kl_coef=0.0, clip_eps=0.01))
    first = learner.step(SAMPLES)
    assert first["clip_fraction"] == 0.0
    samples = carried(SAMPLES, learner.last_logprobs)
    assert all(len(s.old_logprobs) == len(s.completion_ids) for s in samples)
    for _ in range(3):
        later = learner.step(samples)
        assert all(fresh is None for fresh in learner.last_logprobs)  # they carry all it needs: nothing computed
    assert later["clip_fraction"] > 0.0
    assert learner.step(SAMPLES)["clip_fraction"] == 0.0  # the bare samples again: a first sight, ratio 1


def test_the_episode_record_carries_its_behaviour_and_reference_logprobs_through_the_replay(tokenizer, tmp_path):
    """One record from sampling to the loss: the first step on an episode stores its old-policy (and reference)
    log-probs in the episode, the replay shard keeps them, and a later step, after a resume too, reads them there."""
    import numpy as np

    from agents.alphazero.selfplay import train
    from agents.training.replay import Episode, ReplayBuffer

    def episode(response, solved):
        return Episode(
            problem_id="p0",
            question="Q?",
            prompt_ids=[5, 6, 7],
            response_ids=response,
            episode_return=1.0 if solved else -1.0,
            correct=solved,
            format_ok=solved,
            solved=solved,
            iteration=0,
            weights_version=0,
        )

    replay = ReplayBuffer(tmp_path)
    replay.add(0, [episode([8, 9, 10], True), episode([12, 13], False)])
    learner = Learner(make_student(tokenizer), LearnerConfig(kl_coef=0.05, learning_rate=5e-2, clip_eps=0.01))
    train(learner, replay, 1, 1, np.random.default_rng(0), eos_token_id=2, progress=False)
    stored = [(e.old_logprobs, e.ref_logprobs) for e in replay.episodes]
    assert [len(old) for old, _ in stored] == [4, 2] and [len(ref) for _, ref in stored] == [4, 2]  # + eos if solved
    replay.flush()
    again = ReplayBuffer(tmp_path)  # what a resumed run reads
    assert [(e.old_logprobs, e.ref_logprobs) for e in again.episodes] == stored
    history = train(learner, again, 2, 1, np.random.default_rng(0), eos_token_id=2, progress=False)
    assert all(fresh is None for fresh in learner.last_logprobs)  # read from the records, nothing recomputed
    assert history[-1]["clip_fraction"] > 0  # measured against the policy that first trained on them
