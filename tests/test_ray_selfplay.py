"""Self-play in Ray actors (``--workers``) on a local Ray instance with 2 workers and the tiny model: the same
episodes as in-process self-play, and a worker killed mid-iteration loses nothing and records nothing twice."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from agents.alphazero.config import cpu_preset  # noqa: E402
from agents.alphazero.run import Run  # noqa: E402


def tiny_config(model, runs_dir, name: str, workers: int):
    base = cpu_preset()
    return replace(
        base,
        env=replace(base.env, chunk_tokens=4, max_steps=2, max_tokens=8),
        search=replace(base.search, num_simulations=2),
        # float32: a worker's batches differ from the in-process ones, and only float32 products give a row the same
        # logits whatever the batch around it (bfloat16 rounds per shape, so rare near-ties can flip a token)
        student=replace(base.student, model=str(model), precision="float32"),
        loop=replace(base.loop, selfplay="moves", runs_dir=str(runs_dir), run_name=name, iterations=2,
                     num_examples=3, group_size=2, train_steps=1, eval_every=0, eval_size=2, progress=False,
                     workers=workers),
    )  # fmt: skip


def played(episodes):
    """What an episode played: problem, tokens, return, every move's candidates and action, weights version."""
    return [(e.problem_id, e.response_ids, e.episode_return, [(s.candidates, s.action) for s in e.steps],
             e.weights_version) for e in episodes]  # fmt: skip


@pytest.fixture(scope="module")
def runs(local_ray, tiny_dir, tmp_path_factory):
    """Two iterations each: in this process, and with 2 Ray workers (the second on broadcast trained weights)."""
    root = tmp_path_factory.mktemp("ray-runs")
    local, distributed = [], []
    for runs, name, workers in ((local, "one", 0), (distributed, "two", 2)):
        runs.append(Run(tiny_config(tiny_dir, root, name, workers)))  # seeds torch (the learner's dropout)
        for iteration in range(2):
            runs[0].iteration(iteration)
    local, distributed = local[0], distributed[0]
    yield local, distributed
    distributed.close()


def test_two_workers_play_the_in_process_episodes(runs):
    local, distributed = runs
    for iteration in range(2):
        a, b = local.replay.shards[iteration], distributed.replay.shards[iteration]
        assert len(a) == 6 and played(a) == played(b)
    assert {e.weights_version for e in distributed.replay.shards[1]} == {1}  # played with the broadcast weights
    for name, value in local.student.trainable_state().items():  # the same samples trained on: the same weights
        torch.testing.assert_close(distributed.student.trainable_state()[name], value)
    assert local.rng.random() == distributed.rng.random()  # the driver's random stream is where it was


def test_a_worker_killed_mid_iteration_loses_nothing_and_records_nothing_twice(runs, caplog):
    local, distributed = runs
    pool = distributed.workers
    starts = local.player.starts([4, 5, 6, 7], np.random.default_rng(7))
    expected, _, _ = local.player.play(starts, iteration=2, weights_version=local.learner.step_count)
    pool.sync(distributed.learner.step_count, distributed.student)
    jobs = pool.jobs(starts, 2, distributed.env.proposer.state_dict(), iteration=2)
    pending = pool.submit(jobs)
    ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it; its chunk is in flight
    with caplog.at_level(logging.WARNING, logger="agents.alphazero.ray_selfplay"):
        results = pool.collect(pending, jobs)
    assert sum("self-play worker died during chunk 0" in r.message for r in caplog.records) == 1
    assert [r.chunk for r in results] == [0, 1]
    episodes = [e for r in results for e in r.episodes]
    assert played(episodes) == played(expected)  # complete, in order, no episode twice
    # the restarted worker holds no weights: it fetches the current ones before it plays again
    again, stats, _ = pool.play(starts, 2, distributed.env, iteration=2)
    assert played(again) == played(expected) and stats.episodes == 8
