"""The data-parallel learner: 2 torchrun processes (gloo, CPU) step exactly like one, and their checkpoints
resume in another number of processes."""

from __future__ import annotations

import pytest
import torch

from agents.training.checkpoint import load_checkpoint, save_checkpoint
from agents.training.samples import carried
from ddp_worker import CASES, DISTILL, SAMPLES, make_learner, run_case
from helpers import REPO, torchrun

GRADIENTS = dict(atol=1e-7, rtol=1e-5)  # float rounding of sums taken in another order
# AdamW's early updates are about lr * sign(gradient), so an element whose gradient cancels to ~ Adam's eps
# (measured: 7.6e-9, rounded differently by 5e-11) moves ~1e-3 lr differently: the parameters are compared to
# 1% of a step (lr 1e-2), the gradients above exactly
PARAMETERS = dict(atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Each process's results from 2 torchrun processes, which also resume a checkpoint of one process."""
    out = tmp_path_factory.mktemp("ddp")
    learner = make_learner("token")
    learner.step(SAMPLES, DISTILL)
    save_checkpoint(out / "alone", learner)
    torch.save(carried(SAMPLES, learner.last_logprobs), out / "alone" / "samples.pt")
    done = torchrun(2, REPO / "tests" / "ddp_worker.py", str(out), str(out / "alone" / "step-000001"))
    assert done.returncode == 0, done.stderr[-4000:]
    return out, [torch.load(out / f"results-{rank}.pt", weights_only=False) for rank in (0, 1)]


def assert_tensors_close(actual: dict, expected: dict, tolerance: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=lambda m, n=name: f"{what} {n}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_take_the_single_process_steps(two_processes, case):
    _, ranks = two_processes
    alone = run_case(case)
    for rank, results in enumerate(ranks):
        for step, (one, shared) in enumerate(zip(alone, results[case], strict=True)):
            where = f"rank {rank} step {step}"
            assert_tensors_close(shared["grads"], one["grads"], GRADIENTS, f"{where} gradient")
            assert_tensors_close(shared["state"], one["state"], PARAMETERS, f"{where} parameter")
            # the logged metrics are the whole batch's (grad_norm: before the clip), not this process's slice
            assert shared["metrics"] == pytest.approx(one["metrics"], rel=1e-5, abs=1e-7), where
            # every process hands back every sample's old-policy log-probs: the second step's PPO ratios
            assert shared["old"].keys() == one["old"].keys() and len(one["old"]) == len(SAMPLES)
            for key, values in one["old"].items():
                assert shared["old"][key] == pytest.approx(values, abs=1e-5), f"{where} old log-probs {key}"
    assert any(g.abs().max() > 0 for g in alone[0]["grads"].values())
    assert any(not torch.equal(alone[0]["state"][n], alone[1]["state"][n]) for n in alone[0]["state"])


def test_a_checkpoint_of_two_processes_resumes_in_one_and_of_one_in_two(two_processes):
    out, ranks = two_processes
    alone = run_case("token")
    learner = make_learner("token")
    load_checkpoint(out / "token-ckpt" / "step-000001", learner)
    learner.step(torch.load(out / "token-ckpt" / "samples.pt", weights_only=False), DISTILL)
    assert_tensors_close(learner.student.trainable_state(), alone[1]["state"], PARAMETERS, "2 -> 1")
    for rank, results in enumerate(ranks):
        assert_tensors_close(results["resumed"], alone[1]["state"], PARAMETERS, f"1 -> 2, rank {rank}")


def test_micro_batch_size_does_not_change_the_step():
    """What data parallelism rests on: a batch's loss and metrics are the sums of its slices' shares."""
    runs = []
    for size in (1, 3, 8):
        learner = make_learner("token", micro_batch_size=size)
        runs.append((learner.step(SAMPLES, DISTILL), learner.student.trainable_state()))
    for metrics, state in runs[1:]:
        assert metrics == pytest.approx(runs[0][0], rel=1e-5, abs=1e-7)
        assert_tensors_close(state, runs[0][1], PARAMETERS, "parameter")


def test_ray_workers_under_torchrun_are_refused_before_anything_starts(monkeypatch, tmp_path):
    from agents.alphazero.config import RunConfig
    from agents.alphazero.run import Run
    from agents.distributed.ddp import SetupError
    from azgym.cli import parse_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = parse_config(RunConfig, ["--selfplay", "moves", "--workers", "2", "--runs-dir", str(tmp_path)])
    with pytest.raises(SetupError, match="--workers 2 under torchrun \\(2 processes\\): use one or the other"):
        Run(config)
    assert not any(tmp_path.iterdir())  # refused before the run directory or a process group
