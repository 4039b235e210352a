"""One AlphaZero run: build everything a :class:`~agents.alphazero.config.RunConfig` describes, then
iterate self-play -> replay -> learner steps -> evaluation -> checkpoint, logging to TensorBoard.

Everything goes under ``<runs_dir>/<run_name>/``: ``config.json`` (the resolved settings that ran),
TensorBoard events, ``eval-*.json``, ``checkpoints/step-N``, ``replay/iter-N.jsonl``. ``resume``
continues from the newest checkpoint; an iteration whose replay shard was written before the stop
is not played again. Started by ``torchrun --nproc_per_node N`` it is data-parallel
(:mod:`agents.distributed.ddp`): each process plays its share of the problems, all learn each step
together, and rank 0 alone writes the run directory and evaluates. With ``loop.workers`` self-play runs in
Ray actors instead (:mod:`agents.alphazero.ray_selfplay`, imported only then) on the same starting states;
the learner, evaluation and checkpoints stay here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agents.alphazero.adaptive import AdaptiveSelfPlay, AdaptiveStats
from agents.alphazero.config import RunConfig, sampling_temperature
from agents.alphazero.evaluate import METRICS, evaluate
from agents.alphazero.player import Player
from agents.alphazero.selfplay import train
from agents.distributed import ddp
from agents.training.checkpoint import (
    CorruptCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    move_aside,
    save_checkpoint,
)
from agents.training.learner import Learner
from agents.training.replay import ReplayBuffer
from azgym.cli import to_dict
from azgym.errors import UserError
from azgym.tasks import get_task, load_problems

logger = logging.getLogger(__name__)


class RunExistsError(UserError, FileExistsError):
    """The run directory already holds a run and ``resume`` was not asked for."""


class Run:
    """Everything one run holds: directories, student, env, agent, learner, replay, writer (and with
    ``loop.workers``, the Ray self-play workers; the learner stays here)."""

    def __init__(self, config: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        loop = config.loop
        ddp.check_workers(loop.workers)
        self.group = ddp.from_env(config.student.device)  # torchrun's processes, or this one alone
        self.is_main = self.group.is_main
        ddp.check_split(loop.num_examples, self.group)
        if loop.selfplay == "adaptive" and self.group.world_size > 1:
            raise ValueError(
                "--selfplay adaptive runs in one process (its rescue search and solution cache are not "
                "split over torchrun's processes); start it without torchrun, or pass --selfplay moves"
            )
        self.dir = Path(loop.runs_dir) / loop.run_name
        self.checkpoints = Path(loop.checkpoint_dir) if loop.checkpoint_dir else self.dir / "checkpoints"
        if self.dir.exists() and any(self.dir.iterdir()) and not loop.resume:
            raise RunExistsError(
                f"{self.dir} already holds a run; pass --resume to continue it or --run-name NAME for a new one"
            )
        self.group.barrier()  # every process has looked before rank 0 writes
        self.task = get_task(config.env.task)
        self.eval_problems = load_problems(config.env.task, config.env.data, "test")[: loop.eval_size]
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
        student = replace(config.student, device=ddp.per_process_device(config.student.device, self.group))
        self.player = Player.from_config(replace(config, student=student))
        self.student, self.lm, self.env, self.agent = (
            self.player.student,
            self.player.lm,
            self.player.env,
            self.player.agent,
        )
        learner = config.learner
        if not learner.max_completion_tokens:  # Dr. GRPO's constant: the response budget and its end token
            learner = replace(learner, max_completion_tokens=config.env.max_tokens + 1)
        self.learner = Learner(self.student, learner, self.group if self.group.world_size > 1 else None)
        self.replay = ReplayBuffer(
            self.dir / "replay", capacity_iterations=loop.capacity_iterations, persist=self.is_main
        )
        self.replay.shards = self.group.broadcast_object(self.replay.shards)  # rank 0 read them
        self.rng = np.random.default_rng(loop.seed)
        self.start_iteration = 0
        self.base_result: dict | None = None
        self.best_accuracy = -1.0  # of the in-run evaluations of trained weights (the base's is not kept)
        self.generated_tokens = 0  # by self-play, all candidates counted
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        if loop.resume:
            self._resume()
        self.group.broadcast_parameters(self.student.trainable_parameters())  # as DDP does; alone a no-op
        if self.is_main:
            (self.dir / "config.json").write_text(json.dumps(to_dict(config), indent=1))
        self.workers = None
        if loop.workers:  # Ray is imported here only
            from agents.alphazero.ray_selfplay import RaySelfPlay

            self.workers = RaySelfPlay(config, self.student.config)
        self.writer = SummaryWriter(str(self.dir)) if self.is_main else ddp.NullWriter()

    def _resume(self) -> None:
        skipped: set[Path] = set()
        while True:
            path = latest_checkpoint(self.checkpoints, exclude=skipped)
            if path is None:
                found = len(self.replay.shards)
                logger.info(
                    "no checkpoint under %s: starting at iteration 0 (replay shards: %d)", self.checkpoints, found
                )
                return
            try:
                extra = load_checkpoint(path, self.learner)
                break
            except CorruptCheckpointError as err:  # nothing was loaded: the files are read before any is applied
                skipped.add(path)
                self.group.barrier()  # every rank has read it before the main process renames it
                where = move_aside(path) if self.is_main else path
                logger.warning("%s; moved it aside to %s and resuming from the checkpoint before it", err, where)
        self.start_iteration = int(extra["iteration"]) + 1
        self.best_accuracy = float(extra.get("best_accuracy", -1.0))
        best = self.checkpoints / "best" / "trainer.pt"
        if best.is_file():  # saved after the newest step-N when save_every > 1
            kept = torch.load(best, map_location="cpu", weights_only=False).get("extra", {})
            self.best_accuracy = max(self.best_accuracy, float(kept.get("best_accuracy", -1.0)))
        self.generated_tokens = int(extra.get("generated_tokens", 0))
        self.elapsed_before = float(extra.get("elapsed_s", 0.0))  # the budget counts the time before the stop
        self.rng.bit_generator.state = extra["loop_rng"]
        if extra.get("agent_rng") and hasattr(self.agent, "rng"):
            self.agent.rng.bit_generator.state = extra["agent_rng"]
        self.env.proposer.load_state_dict(extra.get("teachers", {}))
        if isinstance(self.agent, AdaptiveSelfPlay) and extra.get("adaptive"):
            self.agent.load_state_dict(extra["adaptive"])
        logger.info("resumed from %s: continuing at iteration %d", path, self.start_iteration)

    def run(self) -> dict | None:
        """Iterate until ``loop.iterations`` or the time budget; return the last evaluation (None if none ran)."""
        loop = self.config.loop
        if self.start_iteration == 0 and loop.eval_every and loop.eval_base and self.is_main:
            self.base_result = self.evaluate(0, tag="base")
        self.started = time.perf_counter() - self.elapsed_before
        last = None
        for iteration in range(self.start_iteration, loop.iterations):
            last, final = self.iteration(iteration, final=iteration + 1 == loop.iterations)
            if final:
                break
        self.close()
        logger.info("run finished: %s (tensorboard --logdir %s)", self.dir, loop.runs_dir)
        return last

    def close(self) -> None:
        """Flush the logs and stop the self-play workers (if any)."""
        self.writer.close()
        if self.workers is not None:
            self.workers.shutdown()

    def over_budget(self) -> bool:
        budget = self.config.loop.budget_min
        return bool(budget) and time.perf_counter() - self.started >= 60 * budget

    def iteration(self, iteration: int, final: bool = False) -> tuple[dict | None, bool]:
        """Self-play, training, evaluation and checkpoint; returns the evaluation (or None) and whether the
        run ends here (the last iteration, or the time budget passed). The last iteration always evaluates."""
        loop, writer = self.config.loop, self.writer
        if iteration in self.replay.shards:
            episodes = self.replay.shards[iteration]
            logger.info(
                "iteration %d: reusing its replay shard from before the stop (%d episodes)", iteration, len(episodes)
            )
        else:
            self.env.proposer.clear_cache()  # the student changed: its old proposals are stale
            temperature = sampling_temperature(loop, iteration)
            if temperature is not None:  # the schedule's candidates' temperature (derived, so resume-safe)
                self.env.proposer.set_temperature(temperature)
                writer.add_scalar("charts/temperature", temperature, iteration)
            problems = self.player.draw_problems(loop.num_examples, iteration, self.rng)
            episodes, stats, tree_stats = self._play(iteration, problems, temperature)
            self.replay.add(iteration, episodes)
            self.generated_tokens += stats.generated_tokens
            self._log_self_play(iteration, episodes, stats, tree_stats)
        global_step = self.learner.step_count

        def on_step(step, metrics, samples):
            if step % loop.log_interval == 0:
                for key, value in metrics.items():
                    writer.add_scalar(f"losses/{key}", value, step)
                writer.add_histogram("losses/rewards", torch.tensor([s.reward for s in samples]), step)

        start = time.perf_counter()
        history = train(
            self.learner,
            self.replay,
            loop.train_steps,
            loop.groups_per_step,
            self.rng,
            self.lm.eos_token_id,
            distill=self.config.learner.distill_coef > 0,
            value_target=loop.value_target,
            dynamic_sampling=loop.learns_differing_groups_only,
            on_step=on_step,
            progress=loop.progress and self.is_main,
        )
        self.replay.flush()  # the log-probs the steps computed, with their episodes, before the checkpoint
        writer.add_scalar("perf/train_seconds", time.perf_counter() - start, iteration)
        writer.add_scalar("perf/learner_steps", len(history), iteration)
        if history:
            logger.info(
                "iteration %d: %d learner steps (step %d -> %d), loss %.4f",
                iteration,
                len(history),
                global_step,
                self.learner.step_count,
                history[-1]["loss"],
            )
        else:
            logger.info("iteration %d: no group in the replay has differing returns: no learner step", iteration)
        if self.over_budget():
            logger.info("time budget of %.1f min reached after iteration %d", loop.budget_min, iteration)
            final = True
        final = self.group.broadcast_object(final)  # rank 0's clock decides for every process
        result = None
        if not self.is_main:  # rank 0 evaluates and writes; the others wait for it at the next collective call
            return result, final
        if loop.eval_every and ((iteration + 1) % loop.eval_every == 0 or final):
            result = self.evaluate(iteration + 1, tag=f"iter-{iteration:04d}")
        agent_rng = getattr(self.agent, "rng", None)
        extra = {
            "iteration": iteration,
            "loop_rng": self.rng.bit_generator.state,
            "agent_rng": agent_rng.bit_generator.state if agent_rng is not None else None,
            "teachers": self.env.proposer.state_dict(),
            "best_accuracy": self.best_accuracy,
            "adaptive": self.agent.state_dict() if isinstance(self.agent, AdaptiveSelfPlay) else None,
            "elapsed_s": time.perf_counter() - self.started,
            "generated_tokens": self.generated_tokens,
        }
        if result is not None and result["accuracy"] > self.best_accuracy:
            self.best_accuracy = extra["best_accuracy"] = result["accuracy"]
            extra["eval"] = {k: result[k] for k in ("accuracy", "accuracy_low", "accuracy_high", "num_problems")}
            best = save_checkpoint(self.checkpoints, self.learner, extra=extra, name="best")
            logger.info("best held-out accuracy so far (%.3f): %s", result["accuracy"], best)
        if (iteration + 1) % loop.save_every == 0 or final:
            logger.info("checkpoint %s", save_checkpoint(self.checkpoints, self.learner, extra=extra))
        writer.flush()
        return result, final

    def _play(self, iteration: int, problems: list[int], temperature: float | None):
        """Self-play on ``problems``: here, in Ray workers, or (under torchrun) process r plays every N-th
        problem's starts; every process draws all the starts from the same stream, so the episodes equal a
        single process's, and every process gets all of them (tree statistics: rank 0's share)."""
        starts = self.player.starts(problems, self.rng)
        version = self.learner.step_count
        if self.workers is not None:
            self.workers.sync(version, self.student)
            return self.workers.play(
                starts, self.player.group_size, self.env, iteration=iteration, temperature=temperature
            )
        group, size = self.group, self.player.group_size
        if group.world_size > 1:
            starts = [s for i, s in enumerate(starts) if (i // size) % group.world_size == group.rank]
        episodes, stats, tree_stats = self.player.play(
            starts, iteration=iteration, weights_version=version, progress=self.config.loop.progress and self.is_main
        )
        if group.world_size > 1:
            episodes, stats = ddp.gather_episodes(group, episodes, stats, [self.env.problems[p].id for p in problems])
            self.env.proposer.load_state_dict(
                group.broadcast_object(self.env.proposer.state_dict())
            )  # rank 0's teacher weights
        return episodes, stats, tree_stats

    def _log_self_play(self, iteration: int, episodes, stats, tree_stats) -> None:
        w = self.writer
        returns = np.array([e.episode_return for e in episodes])
        w.add_scalar("charts/return", returns.mean(), iteration)
        w.add_scalar("charts/reward", float(np.mean([s.reward for e in episodes for s in e.steps])), iteration)
        w.add_scalar("charts/accuracy", float(np.mean([e.correct for e in episodes])), iteration)
        w.add_scalar("charts/solved", float(np.mean([e.solved for e in episodes])), iteration)
        w.add_scalar("charts/format_accuracy", float(np.mean([e.format_ok for e in episodes])), iteration)
        w.add_scalar("charts/episode_length", float(np.mean([len(e.steps) for e in episodes])), iteration)
        w.add_scalar("perf/self_play_seconds", stats.seconds, iteration)
        weights = self.env.proposer.weights
        if len(weights) > 1:
            for name, weight in weights.items():
                w.add_scalar(f"teachers/weight/{name}", weight, iteration)
        w.add_scalar("perf/generated_tokens_per_s", stats.generated_tokens / max(stats.seconds, 1e-9), iteration)
        if stats.tree_nodes:
            w.add_scalar("mcts/tree_size", float(np.mean(stats.tree_nodes)), iteration)
            w.add_scalar("mcts/tree_depth", float(np.mean(stats.tree_depths)), iteration)
            w.add_scalar("mcts/simulations_per_s", float(np.mean(stats.simulations_per_s)), iteration)
            w.add_histogram("mcts/root_values", np.array(stats.root_values), iteration)
        if stats.visit_entropies:
            w.add_histogram("mcts/visit_entropy", np.array(stats.visit_entropies), iteration)
        if tree_stats is not None:
            prefix = getattr(tree_stats, "log_prefix", "tree")
            for key, value in vars(tree_stats).items():
                if np.isfinite(value):
                    w.add_scalar(f"{prefix}/{key}", value, iteration)
        if isinstance(tree_stats, AdaptiveStats) and self.is_main:  # one line per iteration, for the benchmarks
            with (self.dir / "adaptive.jsonl").open("a") as f:
                f.write(json.dumps({"iteration": iteration, **json.loads(tree_stats.to_json())}) + "\n")
        w.add_text("trajectories/sample", _trajectory_text(self.lm, episodes[0]), iteration)
        logger.info(
            "iteration %d: self-play %d episodes in %.0f s, solved %.2f, return %.3f",
            iteration,
            len(episodes),
            stats.seconds,
            np.mean([e.solved for e in episodes]),
            returns.mean(),
        )

    def evaluate(self, step: int, tag: str) -> dict:
        loop = self.config.loop
        result = evaluate(
            self.lm,
            self.eval_problems,
            self.task,
            max_tokens=loop.eval_max_tokens,
            progress=loop.progress,
            prompt=self.config.env.prompt,
            answer=self.config.env.answer,
        )
        for key in METRICS:
            self.writer.add_scalar(f"eval/{key}", result[key], step)
        (self.dir / f"eval-{tag}.json").write_text(json.dumps(result, indent=1))
        logger.info(
            "eval %s: accuracy %.3f (95%% CI %.3f-%.3f), format %.3f on %d problems",
            tag,
            result["accuracy"],
            result["accuracy_low"],
            result["accuracy_high"],
            result["format_accuracy"],
            result["num_problems"],
        )
        return result


def _trajectory_text(lm, episode) -> str:
    lines = [f"**{episode.problem_id}** {episode.question}", ""]
    for i, s in enumerate(episode.steps):
        text = lm.decode(s.candidates[s.action]).strip() if s.candidates else ""
        lines.append(f"{i}. [{s.labels[s.action]}] visits {s.visits} -> `{text}`")
    lines.append("")
    lines.append(f"correct: {episode.correct}, format: {episode.format_ok}, return {episode.episode_return:.3f}")
    return "  \n".join(lines)
