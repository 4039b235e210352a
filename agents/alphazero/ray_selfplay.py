"""Self-play in Ray actors (``--workers N``): each worker holds its own env and student copy; the learner stays
in the driver (:class:`~agents.alphazero.run.Run`).

One iteration:

1. :meth:`RaySelfPlay.sync`: when the learner's step count (the weights version) has changed, the trainable
   weights (the LoRA adapter and the value head; every weight under ``--no-lora``) go into Ray's object
   store once (``ray.put``). Every job carries ``(version, [ref])``: a worker holding another version
   (a restarted worker holds none) fetches them before it plays, so every episode records the version it
   was played with.
2. :meth:`RaySelfPlay.play`: the driver has drawn the starting states (problem and episode seed) exactly as
   in-process self-play does (:meth:`~agents.alphazero.player.Player.starts`); they are split by problem into
   one chunk per worker, each with the env's teacher state and the iteration's sampling temperature.
3. A worker that dies (its call raises ``RayActorError``) is restarted by Ray (``max_restarts``) and its
   chunk is submitted again, to the next worker. Results are kept per chunk, so nothing is recorded twice;
   the episodes come back in the order of their starting states.
4. The teacher credit the workers gave (``env.proposer.observe``) is replayed on the driver's proposer in that order.

Equality with in-process self-play: after the starting states, every random draw is seeded by the state
(candidates, the search's root noise, the move, the rollouts: :func:`~agents.policy.state_rng`), so a chunk
plays what it plays inside the whole batch. With one teacher (the default: the student) the episodes are the
in-process ones, token for token, up to the float rounding of batched forward passes of another batch shape
(which could flip a sample only on a near-tie). With several teachers the slot shares follow the teachers'
credit, which a worker only updates with its own chunk's episodes during an iteration: the episodes then
differ from in-process play (the credit after the iteration is the same).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray.exceptions import RayActorError

from agents.alphazero.config import RunConfig
from agents.alphazero.player import Player
from agents.alphazero.selfplay import SelfPlayStats
from agents.alphazero.tree_play import TreeStats, merge_tree_stats
from agents.student.model import Student, StudentConfig
from agents.training.replay import Episode
from azgym.env import EnvState, ReasoningEnv

logger = logging.getLogger(__name__)

MAX_RESTARTS = 4  # Ray restarts a dead worker this many times
MAX_ATTEMPTS = 3  # a chunk is played at most this many times before the iteration fails


@dataclass(frozen=True)
class Job:
    """One chunk of an iteration's self-play: whole problem groups, in order."""

    chunk: int
    starts: list[EnvState]
    iteration: int
    temperature: float | None  # the candidates' sampling temperature (None: the proposer's own)
    env_state: dict  # the driver's teacher state (env.proposer.state_dict()) at the start of the iteration


@dataclass
class ChunkResult:
    chunk: int
    episodes: list[Episode]
    stats: SelfPlayStats
    tree_stats: TreeStats | None
    observed: list[tuple[tuple[str, ...], float]]  # (teachers, return) the worker credited, in order
    num_starts: int
    weights_version: int


class SelfPlayWorker:
    """A Ray actor's body: a :class:`~agents.alphazero.player.Player` built from the run's config."""

    def __init__(self, config: RunConfig):
        self.player = Player.from_config(config)
        self.version = -1  # no weights from the driver yet

    def ready(self) -> bool:
        """Answers once the worker is built (its model loaded)."""
        return True

    def set_weights(self, version: int, weights: dict) -> None:
        """Load the learner's trainable weights (LoRA adapter and value head) as ``version``."""
        self.player.student.load_trainable_state(weights)  # the prefix cache sees the change and empties
        self.version = version

    def play(self, job: Job, weights: tuple[int, list]) -> ChunkResult:
        """Play ``job`` with the weights ``(version, [object ref])`` (fetched only when not held already)."""
        version, (ref,) = weights
        if version != self.version:
            self.set_weights(version, ray.get(ref))
        env = self.player.env
        env.proposer.load_state_dict(job.env_state)
        env.proposer.clear_cache()
        if job.temperature is not None:
            env.proposer.set_temperature(job.temperature)
        with recorded_observations(env) as observed:
            episodes, stats, tree_stats = self.player.play(
                job.starts, iteration=job.iteration, weights_version=self.version
            )
        return ChunkResult(job.chunk, episodes, stats, tree_stats, observed, len(job.starts), self.version)


@contextmanager
def recorded_observations(env: ReasoningEnv) -> Iterator[list[tuple[tuple[str, ...], float]]]:
    """Record every ``(teachers, return)`` the env's proposer is credited with while the block runs (and credit it
    as usual)."""
    seen: list[tuple[tuple[str, ...], float]] = []
    proposer = env.proposer
    observe = proposer.observe

    def recording(teachers, episode_return: float) -> None:
        seen.append((tuple(teachers), float(episode_return)))
        observe(teachers, episode_return)

    proposer.observe = recording
    try:
        yield seen
    finally:
        del proposer.observe  # the class's method again


class RaySelfPlay:
    """``workers`` self-play actors (``loop.workers`` by default) on a local Ray instance or ``loop.ray_address``.

    Args:
        config: the run's config; each worker builds its player from it.
        student_config: the driver's resolved student settings (after ``init_from``, which the workers do not
            read: they get the driver's weights).
        workers: how many actors (default ``config.loop.workers``).
    """

    def __init__(self, config: RunConfig, student_config: StudentConfig | None = None, *, workers: int = 0):
        num = workers or config.loop.workers
        if num < 1:
            raise ValueError(f"RaySelfPlay needs at least one worker, got {num}")
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=config.loop.ray_address or None, include_dashboard=False, logging_level=logging.WARNING)
        student = replace(student_config or config.student, init_from="")
        resources = ray.cluster_resources()
        options = {"max_restarts": MAX_RESTARTS, "max_task_retries": 0, "num_cpus": _share(resources.get("CPU"), num)}
        if student.device.startswith("cuda"):
            options["num_gpus"] = _share(resources.get("GPU"), num)
        actor = ray.remote(**options)(SelfPlayWorker)
        self.actors = [actor.remote(replace(config, student=student)) for _ in range(num)]
        self.weights: tuple[int, list] | None = None
        logger.info("%d Ray self-play workers (%s each)", num, options)

    def sync(self, version: int, student: Student) -> None:
        """Put the student's trainable weights into the object store as ``version`` (once per version)."""
        if self.weights is None or self.weights[0] != version:
            state = {k: v.cpu() for k, v in student.trainable_state().items()}
            self.weights = (version, [ray.put(state)])

    def play(
        self,
        starts: list[EnvState],
        group_size: int,
        env: ReasoningEnv,
        *,
        iteration: int,
        temperature: float | None = None,
    ) -> tuple[list[Episode], SelfPlayStats, TreeStats | None]:
        """Play from ``starts`` (``group_size`` a problem, a problem's together) on the workers; return what
        :meth:`~agents.alphazero.player.Player.play` would, and credit the driver's ``env``'s teachers."""
        start = time.perf_counter()
        jobs = self.jobs(starts, group_size, env.proposer.state_dict(), iteration=iteration, temperature=temperature)
        results = self.collect(self.submit(jobs), jobs)
        for result in results:
            for teachers, episode_return in result.observed:
                env.proposer.observe(teachers, episode_return)
        return merge_results(results, time.perf_counter() - start)

    def jobs(
        self,
        starts: list[EnvState],
        group_size: int,
        env_state: dict,
        *,
        iteration: int,
        temperature: float | None = None,
    ) -> list[Job]:
        """``starts`` split by problem into at most one chunk per worker, in order."""
        if group_size < 1 or len(starts) % group_size:
            raise ValueError(f"{len(starts)} starting states do not make groups of {group_size}")
        problems = np.arange(len(starts) // group_size)
        chunks = [c for c in np.array_split(problems, len(self.actors)) if len(c)]
        return [
            Job(i, starts[c[0] * group_size : (c[-1] + 1) * group_size], iteration, temperature, env_state)
            for i, c in enumerate(chunks)
        ]

    def submit(self, jobs: list[Job]) -> dict:
        """Start every job (chunk i on worker i mod N); ``{object ref: (chunk, worker)}``."""
        if self.weights is None:
            raise RuntimeError("no weights to play with: call sync(version, student) first")
        return {self._call(j.chunk % len(self.actors), j): (j.chunk, j.chunk % len(self.actors)) for j in jobs}

    def collect(self, pending: dict, jobs: list[Job]) -> list[ChunkResult]:
        """Wait for every chunk; a chunk whose worker died is played again on the next worker."""
        results: dict[int, ChunkResult] = {}
        attempts = Counter(chunk for chunk, _ in pending.values())
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            chunk, worker = pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as err:
                if attempts[chunk] >= MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"self-play chunk {chunk} failed {attempts[chunk]} times; the last worker error: {err}"
                    ) from err
                worker = (worker + 1) % len(self.actors)
                logger.warning(
                    "self-play worker died during chunk %d (%s); playing it again on worker %d",
                    chunk,
                    type(err).__name__,
                    worker,
                )
                pending[self._call(worker, jobs[chunk])] = (chunk, worker)
                attempts[chunk] += 1
                continue
            assert chunk not in results and result.weights_version == self.weights[0], "a chunk came back twice"
            results[chunk] = result
        return [results[chunk] for chunk in sorted(results)]

    def shutdown(self) -> None:
        """Stop the workers (and the local Ray instance this object started)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.started_ray:
            ray.shutdown()

    def _call(self, worker: int, job: Job):
        return self.actors[worker].play.remote(job, self.weights)


def merge_results(results: list[ChunkResult], seconds: float) -> tuple[list[Episode], SelfPlayStats, TreeStats | None]:
    """The chunks' episodes in order, their statistics as one phase of ``seconds`` (wall time), tree stats merged."""
    stats = SelfPlayStats.merged([r.stats for r in results], seconds)
    trees = [(r.tree_stats, r.num_starts, r.stats.generated_tokens) for r in results if r.tree_stats is not None]
    return [e for r in results for e in r.episodes], stats, merge_tree_stats(trees) if trees else None


def _share(total: float | None, workers: int) -> float:
    """Each worker's share of a cluster resource: whole units where there are enough, else a fraction."""
    if not total:
        raise RuntimeError("the Ray cluster has none of a resource the workers need (CPU, or GPU for a cuda student)")
    return float(max(int(total // workers), 1)) if total >= workers else total / workers
