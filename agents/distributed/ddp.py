"""Data parallelism over processes started by ``torchrun``: each plays its share, all learn each step together.

``torchrun --nproc_per_node N scripts/selfplay.py ...`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`from_env` then joins the process group (gloo on a CPU, nccl on GPUs, one GPU per process) and
returns a :class:`ProcessGroup`; alone it returns :class:`Alone`, whose methods do nothing. The run
(:class:`agents.alphazero.run.Run`) splits and replicates like this:

- **split**: each iteration's problems (every process draws the same list, process r plays every N-th one
  from the r-th, with its own random stream); each learner batch (:func:`agents.training.learner.shard`).
- **replicated**: the weights and optimizer state (one copy per process; no FSDP-style sharding, so the
  student must fit on each device), the replay (episodes are all-gathered after self-play, in the
  problems' order), the draw of each step's groups, the remembered old-policy log-probs.
- **rank 0 only**: the run directory, checkpoints, replay shards, TensorBoard, evaluations and logs.

**The learner step is the single-process step.** Every process is handed the same global batch and
computes the group advantages and the loss's normalisers (sequences, tokens, value positions, distilled
states) over all of it; each then runs forward and backward on its contiguous slice only, so its loss is
the sum of its samples' terms divided by the *global* counts. The gradients are then summed (not
averaged) across processes: the sum of the slices' gradients is the gradient of the whole batch, up to
float rounding, and every process clips and steps identically (exact only without LoRA dropout, whose
masks differ; the test runs with ``lora_dropout 0``).

**Why not ``torch.nn.parallel.DistributedDataParallel``.** DDP averages gradients inside ``backward``
of a module's ``forward``; the learner drives the student through ``forward_batch`` and a separate
distillation pass, accumulates over a number of micro-batches that differs between processes, and a
process may even have nothing to train in a step. DDP would need ``no_sync`` on every micro-batch but
the last, ``join`` for uneven ones and a world-size rescale of the loss. Summing the accumulated
gradients once per step, in buckets (:meth:`ProcessGroup.all_reduce_gradients`), is the same algorithm
as DDP with gradient accumulation, minus DDP's overlap of communication with the backward pass, which
LoRA-sized gradients do not need.

**Checkpoints do not depend on the number of processes**: trainable weights, optimizer state and the
old-policy log-probs are the same on every process, so rank 0's checkpoint resumes with any number.
The run directory must be on a file system every process sees (one machine, or a shared disk).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from azgym.errors import UserError

logger = logging.getLogger(__name__)

BUCKET_BYTES = 64 * 2**20  # gradients are summed in flat buckets of at most this many bytes
# rank 0 evaluates alone while the others wait at their next collective call: allow long evaluations
TIMEOUT = timedelta(hours=2)


class SetupError(UserError, ValueError):
    """A data-parallel run that cannot start as configured."""


class Alone:
    """A process on its own: rank 0 of 1, every collective call a no-op."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        return True

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        pass

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        pass

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessGroup(Alone):
    """This process's place in the default ``torch.distributed`` group (:func:`from_env` makes it)."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every ``p.grad`` (None counts as zeros) by its sum over the processes."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params, BUCKET_BYTES):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Give every process rank 0's values of ``params`` (what DDP does when it wraps a module)."""
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        shutdown()


def from_env(device: str = "cpu") -> Alone | ProcessGroup:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else :class:`Alone`.

    The backend is nccl when ``device`` is a CUDA device (each process takes GPU ``LOCAL_RANK``), else gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Alone()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(
                f"process {rank} wants GPU {local_rank} but this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    logger.info("process %d of %d (%s)", rank, world_size, "nccl" if cuda else "gloo")
    return ProcessGroup(rank, world_size, local_rank, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_workers(workers: int) -> None:
    """Ray self-play workers and torchrun's processes do not mix (each process would start its own actors)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if workers > 0 and world_size > 1:
        raise SetupError(
            f"--workers {workers} under torchrun ({world_size} processes): use one or the other, "
            "torchrun for a data-parallel learner or --workers for Ray self-play actors"
        )


def check_split(num_problems: int, group: Alone) -> None:
    """Every process needs at least one problem of each iteration to play.

    >>> check_split(2, ProcessGroup(0, 4, 0, torch.device("cpu")))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    agents.distributed.ddp.SetupError: --num-examples 2 is fewer than the 4 processes: each plays at least one ...
    """
    if num_problems < group.world_size:
        raise SetupError(
            f"--num-examples {num_problems} is fewer than the {group.world_size} processes: each plays "
            f"at least one problem; raise --num-examples to {group.world_size} or start fewer processes "
            "(torchrun --nproc_per_node)"
        )


def per_process_device(device: str, group: Alone) -> str:
    """The device a process uses: with several processes on CUDA, GPU ``LOCAL_RANK``.

    >>> per_process_device("cuda", Alone()), per_process_device("cpu", ProcessGroup(1, 2, 1, torch.device("cpu")))
    ('cuda', 'cpu')
    """
    if group.world_size > 1 and device.startswith("cuda"):
        return f"cuda:{group.local_rank}"
    return device


def gather_episodes(group: Alone, episodes: list, stats, problem_ids: Sequence[str]):
    """Every process's episodes, ordered by ``problem_ids`` (the iteration's draw), and their stats merged:
    token counts and per-tree lists add up, the self-play time is the slowest process's."""
    parts = group.all_gather_object((episodes, stats))
    order = {pid: i for i, pid in enumerate(problem_ids)}
    merged = sorted((e for part, _ in parts for e in part), key=lambda e: order[e.problem_id])
    all_stats = [s for _, s in parts]
    return merged, type(stats).merged(all_stats, seconds=max(s.seconds for s in all_stats))


class NullWriter:
    """A TensorBoard writer that writes nothing (every process but rank 0)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _buckets(params: Sequence[torch.nn.Parameter], max_bytes: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive parameters of one dtype and device, grouped up to ``max_bytes`` (a larger one alone)."""
    out: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        last = out[-1] if out else None
        if last is None or size + nbytes > max_bytes or (last[0].dtype, last[0].device) != (p.dtype, p.device):
            out.append([p])
            size = nbytes
        else:
            last.append(p)
            size += nbytes
    return out
