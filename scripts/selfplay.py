"""The AlphaZero loop: self-play with MCTS -> on-disk replay -> GRPO + value training -> evaluation -> checkpoint.

    python scripts/selfplay.py                                   # CPU-sized run on 2-digit addition
    python scripts/selfplay.py --task gsm8k --data ../shared/data/gsm8k --iterations 3
    python scripts/selfplay.py --run-name demo --resume          # continue a stopped run
    tensorboard --logdir runs

The student (default SmolLM2-135M-Instruct + LoRA) is also the teacher: it proposes the K
candidate steps of every node (right and deliberately wrong prompts), its value head scores the
leaves, and the grader scores finished responses (outcome reward). Each iteration plays
``--num-examples`` problems ``--group-size`` times each (B trees in lockstep), stores the episodes
as a replay shard, trains ``--train-steps`` learner steps on problem groups from the replay
(``--use-grpo``, the default, or ``--use-legacy`` reward-weighted SL; value regression always;
``--distill`` adds the visit-count target), evaluates greedy decoding on ``--eval-size`` held-out
problems every ``--eval-every`` iterations, and checkpoints every ``--save-every`` iterations.

Everything goes under ``runs/<run-name>/``: config.json, TensorBoard events, eval-*.json,
checkpoints/step-N, replay/iter-N.jsonl. ``--resume`` continues from the newest checkpoint; an
iteration whose replay shard was written before the stop is not played again. Ctrl-C stops
cleanly and leaves a resumable run. Environment variables (the seed system's):
``NUM_MCTS_ITERATIONS`` overrides ``--simulations``, ``MAX_TREE_DEPTH`` ``--max-depth``,
``MAX_TOKENS`` ``--max-tokens``, when the flag is not given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from agents.evaluate import evaluate
from agents.learner import Learner, LearnerConfig
from agents.loop import self_play, train
from agents.mcts import MCTSAgent
from agents.replay import ReplayBuffer
from agents.similarity import SimilarityAgent
from agents.student import Student, StudentConfig
from agents.value import LMValueFunction
from azgym.env import TASKS, ReasoningEnv
from azgym.models import DEFAULT_MODEL
from azgym.overrides import int_override
from azgym.rewards import outcome_preset

logger = logging.getLogger("selfplay")


@dataclass
class SelfPlayConfig:
    run_name: str = "selfplay"  # the run directory is runs/<run_name>
    runs_dir: str = "runs"
    resume: bool = False  # continue runs/<run_name> from its newest checkpoint
    task: str = "arithmetic"  # arithmetic | gsm8k
    data: str = ""  # task data: a GSM8K path / Hub id, an arithmetic level ("add2"); "" = the task's default
    model: str = DEFAULT_MODEL  # student (and teacher): short name, local path or Hub id
    device: str = "cpu"
    iterations: int = 2
    num_examples: int = 2  # problems per iteration
    group_size: int = 4  # episodes per problem (the GRPO group)
    agent: str = (
        "mcts"  # mcts | similarity (the seed's epsilon-greedy pick of the candidate nearest the student's step)
    )
    epsilon: float = 0.3  # similarity agent: probability of a random candidate
    simulations: int = 0  # MCTS simulations per move (0: $NUM_MCTS_ITERATIONS or 4); 1 = no search
    num_right: int = 2
    num_wrong: int = 1
    chunk_tokens: int = 16
    max_depth: int = 0  # steps per episode (0: $MAX_TREE_DEPTH or 4)
    max_tokens: int = 0  # response tokens (0: $MAX_TOKENS or 64)
    train_steps: int = 4  # learner steps per iteration
    groups_per_step: int = 2  # problem groups per learner step
    use_grpo: bool = True
    use_legacy: bool = False  # reward-weighted supervised learning instead of GRPO
    distill: bool = False  # add the MCTS visit-distillation loss
    value_target: str = "outcome"  # outcome | q
    teachers: str = ""  # "" (the student proposes alone), a tier (local) or comma-separated model names
    terminal: str = "rule"  # rule (answer marker / end of sequence) | model (also the student's "is it complete?")
    prompt: str = "task"  # solve prompt's system message: task (the task's own) | bare (the question alone) | text
    answer: str = "strict"  # strict: reward the '#### ' answer; flexible: the last number (truncated episodes too)
    learning_rate: float = 2e-4
    kl_coef: float = 0.01
    lora_r: int = 32
    capacity_iterations: int = 4  # replay shards kept
    eval_every: int = 1  # evaluate every N iterations (0: never); iteration 0 evaluates the base too
    eval_size: int = 16
    eval_max_tokens: int = 64
    save_every: int = 1
    checkpoint_dir: str = ""  # default: runs/<run_name>/checkpoints
    log_interval: int = 1  # learner steps between scalar logs
    seed: int = 0
    budget_min: float = 0.0  # stop (with a checkpoint) after the iteration that passes this many minutes; 0: none
    progress: bool = True

    def validate(self) -> list[str]:
        problems = []
        if self.task not in TASKS:
            problems.append(f"--task {self.task!r}: choose one of {', '.join(sorted(TASKS))}")
        for name in ("iterations", "num_examples", "group_size", "train_steps", "groups_per_step", "eval_size",
                     "save_every", "log_interval", "capacity_iterations", "num_right", "chunk_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.answer not in ("strict", "flexible"):
            problems.append(f"--answer must be 'strict' or 'flexible', got {self.answer!r}")
        if self.terminal not in ("rule", "model"):
            problems.append(f"--terminal must be 'rule' or 'model', got {self.terminal!r}")
        if self.agent not in ("mcts", "similarity"):
            problems.append(f"--agent must be 'mcts' or 'similarity', got {self.agent!r}")
        if self.value_target not in ("outcome", "q"):
            problems.append(f"--value-target must be 'outcome' or 'q', got {self.value_target!r}")
        if self.group_size < 2 and not self.use_legacy:
            problems.append("--group-size must be at least 2 for GRPO (advantages are relative within a group)")
        return problems


def parse_args(argv=None) -> SelfPlayConfig:
    defaults = SelfPlayConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(SelfPlayConfig):
        flag = f"--{f.name.replace('_', '-')}"
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    config = SelfPlayConfig(**vars(parser.parse_args(argv)))
    if config.use_legacy:
        config.use_grpo = False
    problems = config.validate()
    if problems:
        parser.error("; ".join(problems))
    return config


def setting(flag: int, env_name: str, default: int) -> int:
    """The seed system's precedence: a given flag (non-zero), else the environment variable, else the default."""
    return int_override(flag or None, env_name, default, name=env_name.lower())


class Run:
    """Everything one run holds: directories, student, env, agent, learner, replay, writer."""

    def __init__(self, config: SelfPlayConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.dir = Path(config.runs_dir) / config.run_name
        self.checkpoints = Path(config.checkpoint_dir) if config.checkpoint_dir else self.dir / "checkpoints"
        if self.dir.exists() and any(self.dir.iterdir()) and not config.resume:
            raise SystemExit(
                f"{self.dir} already holds a run; pass --resume to continue it or --run-name NAME for a new one"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.student = Student.from_config(
            StudentConfig(model=config.model, lora_r=config.lora_r, lora_alpha=config.lora_r, device=config.device)
        )
        self.lm = self.student.backend(name=config.model)  # the student proposes as this teacher in an ensemble
        task = TASKS[config.task]
        data = config.data or task.HUB_ID
        self.env = ReasoningEnv(
            data, "train", model=self.lm, task=config.task, num_right=config.num_right, num_wrong=config.num_wrong,
            chunk_tokens=config.chunk_tokens, max_depth=setting(config.max_depth, "MAX_TREE_DEPTH", 4),
            max_tokens=setting(config.max_tokens, "MAX_TOKENS", 64),
            rewards=dataclasses.replace(outcome_preset(), answer=config.answer), prompt=config.prompt,
            teachers=config.teachers or None, device=config.device, terminal=config.terminal,
        )  # fmt: skip
        self.task = task
        self.eval_problems = task.load_problems(data, "test")[: config.eval_size]
        simulations = setting(config.simulations, "NUM_MCTS_ITERATIONS", 4)
        if config.agent == "similarity":
            self.agent = SimilarityAgent(self.lm, epsilon=config.epsilon, seed=config.seed)
        else:
            self.agent = MCTSAgent(LMValueFunction(self.lm, self.student.value_head), num_simulations=simulations,
                                   seed=config.seed, reuse_tree=False)  # fmt: skip
        loss = "legacy" if config.use_legacy else "grpo"
        self.learner = Learner(
            self.student,
            LearnerConfig(loss=loss, learning_rate=config.learning_rate, kl_coef=config.kl_coef,
                          distill_coef=0.5 if config.distill else 0.0, micro_batch_size=8),
        )  # fmt: skip
        self.replay = ReplayBuffer(self.dir / "replay", capacity_iterations=config.capacity_iterations)
        self.rng = np.random.default_rng(config.seed)
        self.start_iteration = 0
        if config.resume:
            self._resume()
        (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        self.writer = SummaryWriter(str(self.dir))

    def _resume(self) -> None:
        path = latest_checkpoint(self.checkpoints)
        if path is None:
            logger.info("no checkpoint under %s: starting from iteration 0 (replay shards found: %d)",
                        self.checkpoints, len(self.replay.shards))  # fmt: skip
            return
        extra = load_checkpoint(path, self.learner)
        self.start_iteration = int(extra["iteration"]) + 1
        self.rng.bit_generator.state = extra["loop_rng"]
        self.agent.rng.bit_generator.state = extra["agent_rng"]
        self.env.proposer.load_state_dict(extra.get("teachers", {}))
        logger.info("resumed from %s: continuing at iteration %d", path, self.start_iteration)

    def run(self) -> None:
        config = self.config
        if self.start_iteration == 0 and config.eval_every:
            self.evaluate(0, tag="base")
        started = time.perf_counter()
        for iteration in range(self.start_iteration, config.iterations):
            last = config.budget_min and time.perf_counter() - started >= 60 * config.budget_min
            if last:
                logger.info("time budget of %.1f min reached after iteration %d", config.budget_min, iteration - 1)
                break
            self.iteration(iteration, final=iteration + 1 == config.iterations)
        self.writer.close()
        logger.info("run finished: %s (tensorboard --logdir %s)", self.dir, config.runs_dir)

    def iteration(self, iteration: int, final: bool = False) -> None:
        config, writer = self.config, self.writer
        if iteration in self.replay.shards:
            episodes = self.replay.shards[iteration]
            logger.info("iteration %d: reusing its replay shard from before the stop (%d episodes)",
                        iteration, len(episodes))  # fmt: skip
        else:
            self.env.proposer.clear_cache()  # the student changed: its old proposals are stale
            problems = self.rng.choice(len(self.env.problems), size=config.num_examples, replace=False).tolist()
            self.student.eval()
            episodes, stats = self_play(self.env, self.agent, problems, config.group_size, self.rng,
                                        iteration=iteration, weights_version=self.learner.step_count,
                                        progress=config.progress)  # fmt: skip
            self.replay.add(iteration, episodes)
            self._log_self_play(iteration, episodes, stats)
        global_step = self.learner.step_count

        def on_step(step, metrics, samples):
            if step % config.log_interval == 0:
                for key, value in metrics.items():
                    writer.add_scalar(f"losses/{key}", value, step)
                rewards = torch.tensor([s.reward for s in samples])
                writer.add_histogram("losses/rewards", rewards, step)

        start = time.perf_counter()
        history = train(self.learner, self.replay, config.train_steps, config.groups_per_step, self.rng,
                        self.lm.eos_token_id, distill=config.distill, value_target=config.value_target,
                        on_step=on_step, progress=config.progress)  # fmt: skip
        writer.add_scalar("perf/train_seconds", time.perf_counter() - start, iteration)
        logger.info("iteration %d: %d learner steps (step %d -> %d), loss %.4f", iteration, len(history),
                    global_step, self.learner.step_count, history[-1]["loss"])  # fmt: skip
        if config.eval_every and (iteration + 1) % config.eval_every == 0:
            self.evaluate(iteration + 1, tag=f"iter-{iteration:04d}")
        if (iteration + 1) % config.save_every == 0 or final or config.budget_min:
            extra = {"iteration": iteration, "loop_rng": self.rng.bit_generator.state,
                     "agent_rng": self.agent.rng.bit_generator.state,
                     "teachers": self.env.proposer.state_dict()}  # fmt: skip
            path = save_checkpoint(self.checkpoints, self.learner, extra=extra)
            logger.info("checkpoint %s", path)
        writer.flush()

    def _log_self_play(self, iteration: int, episodes, stats) -> None:
        w = self.writer
        returns = np.array([e.episode_return for e in episodes])
        w.add_scalar("charts/return", returns.mean(), iteration)
        w.add_scalar("charts/reward", float(np.mean([s.reward for e in episodes for s in e.steps])), iteration)
        w.add_scalar("charts/accuracy", float(np.mean([e.correct for e in episodes])), iteration)
        w.add_scalar("charts/solved", float(np.mean([e.solved for e in episodes])), iteration)
        w.add_scalar("charts/format_accuracy", float(np.mean([e.format_ok for e in episodes])), iteration)
        w.add_scalar("charts/episode_length", float(np.mean([len(e.steps) for e in episodes])), iteration)
        w.add_scalar("perf/self_play_seconds", stats.seconds, iteration)
        if len(self.env.proposer.teachers) > 1:
            for name, weight in self.env.proposer.weights.items():
                w.add_scalar(f"teachers/weight/{name}", weight, iteration)
        w.add_scalar("perf/generated_tokens_per_s", stats.generated_tokens / max(stats.seconds, 1e-9), iteration)
        if stats.tree_nodes:
            w.add_scalar("mcts/tree_size", float(np.mean(stats.tree_nodes)), iteration)
            w.add_scalar("mcts/tree_depth", float(np.mean(stats.tree_depths)), iteration)
            w.add_scalar("mcts/simulations_per_s", float(np.mean(stats.simulations_per_s)), iteration)
            w.add_histogram("mcts/root_values", np.array(stats.root_values), iteration)
        w.add_histogram("mcts/visit_entropy", np.array(stats.visit_entropies), iteration)
        w.add_text("trajectories/sample", _trajectory_text(self.lm, episodes[0]), iteration)
        logger.info("iteration %d: self-play %d episodes in %.0f s, accuracy %.2f, return %.3f", iteration,
                    len(episodes), stats.seconds, np.mean([e.correct for e in episodes]), returns.mean())  # fmt: skip

    def evaluate(self, step: int, tag: str) -> dict:
        self.student.eval()
        result = evaluate(self.lm, self.eval_problems, self.task, max_tokens=self.config.eval_max_tokens,
                          progress=self.config.progress, prompt=self.config.prompt)  # fmt: skip
        for key in ("accuracy", "format_accuracy", "flexible_accuracy", "wrong_answer", "format_failure",
                    "tokens_per_problem"):  # fmt: skip
            self.writer.add_scalar(f"eval/{key}", result[key], step)
        (self.dir / f"eval-{tag}.json").write_text(json.dumps(result, indent=1))
        logger.info("eval %s: accuracy %.3f, format %.3f on %d problems", tag, result["accuracy"],
                    result["format_accuracy"], result["num_problems"])  # fmt: skip
        return result


def _trajectory_text(lm, episode) -> str:
    lines = [f"**{episode.problem_id}** {episode.question}", ""]
    for i, s in enumerate(episode.steps):
        text = lm.decode(s.candidates[s.action]).strip() if s.candidates else ""
        lines.append(f"{i}. [{s.labels[s.action]}] visits {s.visits} -> `{text}`")
    lines.append("")
    lines.append(f"correct: {episode.correct}, format: {episode.format_ok}, return {episode.episode_return:.3f}")
    return "  \n".join(lines)


def main(argv=None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Run(config)
    try:
        run.run()
    except KeyboardInterrupt:
        run.writer.close()
        logger.warning("interrupted; finished iterations are saved. Continue with: python scripts/selfplay.py "
                       "--run-name %s --resume", config.run_name)  # fmt: skip
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
