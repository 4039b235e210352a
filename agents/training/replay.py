"""The replay buffer: self-play episodes on disk, one shard per iteration, capacity-bounded.

Each iteration's episodes go to ``<dir>/iter-000007.jsonl`` (one JSON episode per line), written
to a temporary file and renamed, so a shard is either complete or absent. On load, a shard that
cannot be read is reported, moved aside to ``*.corrupt`` and skipped; the other shards load. When
more than ``capacity_iterations`` shards exist, the oldest are deleted. With ``persist=False`` the buffer
lives in memory only and never touches the directory (the processes of a data-parallel run but rank 0).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_SHARD = re.compile(r"^iter-(\d+)\.jsonl$")


@dataclass
class StepRecord:
    """One move of an episode, with the search statistics at its root."""

    response_len: int  # response tokens before this move (the state is prompt + response[:response_len])
    candidates: list[list[int]]  # the K candidate steps (token ids)
    labels: list[str]  # "right" / "wrong" per candidate
    priors: list[float]
    visits: list[int]  # root visit counts
    q_values: list[float | None]  # Q(root, a), None for actions never tried
    action: int
    reward: float
    policy: list[float] | None = None  # the search's policy target at the root (None: the visit fractions)


@dataclass
class Episode:
    """A finished self-play episode."""

    problem_id: str
    question: str
    prompt_ids: list[int]  # the solve prompt the student is trained on
    response_ids: list[int]
    episode_return: float
    correct: bool  # strict grade: the answer after the '#### ' marker is right
    format_ok: bool
    solved: bool  # the episode earned the final-answer reward (HRE) under its reward settings
    iteration: int
    weights_version: int  # learner step whose weights played it
    steps: list[StepRecord] = field(default_factory=list)
    truncated: bool = False  # ran out of steps or tokens before it ended on its own (older shards: False)
    # tree self-play (agents.alphazero.tree_play): each response token's step advantage, and [position, target]
    # value targets along the path; None: a played episode (group advantages, value target from the outcome)
    token_advantages: list[float] | None = None
    value_targets: list[list[float]] | None = None
    # how the response was found: "sampled" (played by the self-play agent), "search" (a solved path of the rescue
    # search) or "cache" (a verified response kept from an earlier iteration); agents.alphazero.adaptive
    source: str = "sampled"
    # what the learner computed the first time it trained on the episode, per completion token (the response and
    # its end-of-sequence token): the behaviour log-probs (PPO's old policy) and the reference's (under the
    # student's reference_version ref_version). None until then; stored here so that no cache holds them
    old_logprobs: list[float] | None = None
    ref_logprobs: list[float] | None = None
    ref_version: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Episode:
        raw = json.loads(line)
        raw["steps"] = [StepRecord(**s) for s in raw.get("steps", [])]
        return cls(**raw)


def returns_equal(group: list[Episode]) -> bool:
    """Whether every episode of a group has the same return (no GRPO advantage)."""
    returns = [e.episode_return for e in group]
    return max(returns) - min(returns) <= 1e-9


class ReplayBuffer:
    """Episodes of the last ``capacity_iterations`` iterations, persisted under ``directory`` (with ``persist``)."""

    def __init__(self, directory: str | Path, capacity_iterations: int = 4, *, persist: bool = True):
        if capacity_iterations < 1:
            raise ValueError(f"capacity_iterations must be at least 1, got {capacity_iterations}")
        self.directory = Path(directory)
        self.capacity_iterations = capacity_iterations
        self.persist = persist
        self.shards: dict[int, list[Episode]] = {}
        self._changed: set[int] = set()  # iterations whose episodes changed since their shard was written
        if persist:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load()

    def __len__(self) -> int:
        return sum(len(v) for v in self.shards.values())

    @property
    def episodes(self) -> list[Episode]:
        return [e for i in sorted(self.shards) for e in self.shards[i]]

    def add(self, iteration: int, episodes: list[Episode]) -> Path:
        """Write the iteration's shard atomically (with ``persist``), then drop shards past capacity."""
        path = self._write(iteration, episodes) if self.persist else self._path(iteration)
        self.shards[iteration] = list(episodes)
        for old in sorted(self.shards)[: -self.capacity_iterations]:
            del self.shards[old]
            if self.persist:
                (self.directory / f"iter-{old:06d}.jsonl").unlink(missing_ok=True)
        return path

    def changed(self, episode: Episode) -> None:
        """Note that ``episode`` (held here) gained fields since its shard was written; :meth:`flush` rewrites it."""
        self._changed.add(episode.iteration)

    def flush(self) -> None:
        """Rewrite the shards whose episodes changed (atomically, as :meth:`add` writes them)."""
        for iteration in sorted(self._changed):
            if iteration in self.shards and self.persist:
                self._write(iteration, self.shards[iteration])
        self._changed.clear()

    def groups(self) -> dict[str, list[Episode]]:
        """Episodes by problem (the GRPO groups), across the kept iterations."""
        out: dict[str, list[Episode]] = defaultdict(list)
        for episode in self.episodes:
            out[f"{episode.iteration}:{episode.problem_id}"].append(episode)
        return dict(out)

    def sample_groups(
        self, num_groups: int, rng: np.random.Generator, *, differing_only: bool = False
    ) -> list[list[Episode]]:
        """``num_groups`` problem groups drawn without replacement (all of them if fewer exist); with
        ``differing_only``, only from the groups whose returns differ (DAPO's dynamic sampling)."""
        groups = list(self.groups().values())
        if differing_only:
            groups = [g for g in groups if not returns_equal(g)]
        if not groups:
            return []
        chosen = rng.choice(len(groups), size=min(num_groups, len(groups)), replace=False)
        return [groups[i] for i in sorted(chosen)]

    def _path(self, iteration: int) -> Path:
        return self.directory / f"iter-{iteration:06d}.jsonl"

    def _write(self, iteration: int, episodes: list[Episode]) -> Path:
        path = self._path(iteration)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as f:
            for episode in episodes:
                f.write(episode.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def _load(self) -> None:
        for path in sorted(self.directory.iterdir()):
            match = _SHARD.match(path.name)
            if match is None:
                continue
            try:
                with path.open(encoding="utf-8") as f:
                    episodes = [Episode.from_json(line) for line in f if line.strip()]
            except (json.JSONDecodeError, TypeError, KeyError, UnicodeDecodeError) as err:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                logger.warning(
                    "replay shard %s is unreadable (%s: %s); moved it to %s and skipped it, the other shards "
                    "are loaded",
                    path,
                    type(err).__name__,
                    err,
                    aside.name,
                )
                continue
            self.shards[int(match.group(1))] = episodes
        for old in sorted(self.shards)[: -self.capacity_iterations]:
            del self.shards[old]
