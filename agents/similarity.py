"""The seed system's selection rule, as an agent beside MCTS: the student writes its own next step,
then the agent takes the candidate most similar to it, or with probability ``epsilon`` a random one.

Similarity is lexical by default (cosine of character 3-gram counts: cheap, no model) or
``"embedding"``: cosine of the student's own mean-pooled last hidden states, which needs no model
beyond the one already loaded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from agents.policy import Policy, base_env, base_seed, sample_action, state_rng
from azgym.env import EnvState

SIMILARITIES = ("lexical", "embedding")
OWN_STEP_SALT = 2  # separates the student's own-step seed from other per-state draws


def lexical_similarity(a: str, b: str, n: int = 3) -> float:
    """Cosine similarity of the character ``n``-gram counts of two texts, in [0, 1]."""
    grams_a, grams_b = _ngrams(a, n), _ngrams(b, n)
    if not grams_a or not grams_b:
        return float(a.strip() == b.strip())
    dot = sum(count * grams_b[g] for g, count in grams_a.items())
    norm = np.sqrt(sum(c * c for c in grams_a.values()) * sum(c * c for c in grams_b.values()))
    return float(dot / norm)


def _ngrams(text: str, n: int) -> Counter:
    text = " ".join(text.lower().split())
    return Counter(text[i : i + n] for i in range(max(len(text) - n + 1, 0)))


class SimilarityAgent:
    """ε-greedy selection by similarity to the student's own continuation.

    Args:
        lm: the student (a :class:`~azgym.lm.hf.HFBackend` for ``similarity="embedding"``).
        epsilon: probability of a uniformly random valid candidate (the seed system used 0.3).
        similarity: ``"lexical"`` or ``"embedding"``.
        temperature: sampling temperature of the student's own step (0: greedy).
        seed: seeds the agent's choices and the student's samples (each state's own step is seeded by
            the seed and the state, so it does not depend on the other states of a batch).
    """

    def __init__(
        self,
        lm,
        *,
        epsilon: float = 0.3,
        similarity: str = "lexical",
        temperature: float = 0.7,
        seed: int | None = None,
    ):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if similarity == "embedding" and not hasattr(lm, "embed"):
            raise ValueError(
                f"similarity='embedding' needs a backend with embed() (HFBackend), got {type(lm).__name__}"
            )
        self.lm, self.epsilon, self.similarity, self.temperature = lm, epsilon, similarity, temperature
        self.rng = np.random.default_rng(seed)
        self.seed = base_seed(seed)

    def policy(self, env, states: Sequence[EnvState]) -> Policy:
        """[B, K] action distributions: ``1 - epsilon`` on the most similar candidate, ``epsilon``
        spread over the valid ones."""
        base = base_env(env)
        candidates = base.expand(states)  # cached per state: no second proposal
        own = self._own_steps(base, states)
        out = np.zeros((len(states), base.action_space.n))
        for row, (cands, mine) in enumerate(zip(candidates, own, strict=True)):
            if not cands:
                continue
            scores = self._similarities(mine, [c.text for c in cands])
            out[row, : len(cands)] = self.epsilon / len(cands)
            out[row, int(np.argmax(scores))] += 1.0 - self.epsilon
        return Policy(out)

    def act(self, env) -> int:
        """An action for the env's current state."""
        return sample_action(self.policy(env, [base_env(env).get_state()]).probs[0], self.rng)

    def _own_steps(self, env, states: Sequence[EnvState]) -> list[str]:
        prompts = [env.solve_prompt(s) + list(s.response_ids) for s in states]
        budgets = [env.step_budget(s) for s in states]
        seeds = [int(state_rng(s, OWN_STEP_SALT, self.seed).integers(0, 2**31 - 1)) for s in states]
        samples = self.lm.generate(
            prompts, max_tokens=budgets, stop=env.step_stop, temperature=self.temperature, seed=seeds
        )
        return [s[0].text for s in samples]

    def _similarities(self, mine: str, texts: list[str]) -> np.ndarray:
        if self.similarity == "lexical":
            return np.array([lexical_similarity(mine, t) for t in texts])
        vectors = self.lm.embed([mine, *texts])
        return vectors[1:] @ vectors[0]
