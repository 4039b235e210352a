"""The student's value head and the value function that reads it during search.

A state's value is its expected outcome on the value scale of :mod:`azgym.rewards` (+1 solved,
-1 not), in [-1, 1]; see :mod:`agents.policy` for the value-function contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from azgym.env import EnvState, ReasoningEnv
from azgym.lm.hf import HFBackend
from azgym.lm.modes import eval_mode


class ValueHead(nn.Module):
    """``tanh(w · h + b)`` on the final hidden state ``h`` of a state's last token."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)  # an untrained head says 0 for every state
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(hidden)).squeeze(-1)


class LMValueFunction:
    """A language model's last hidden state under the solve prompt, through a :class:`ValueHead`.

    The hidden states come from :meth:`~azgym.lm.hf.HFBackend.last_hidden`: with the backend's prefix
    cache on, a state whose candidates were just scored under the solve prompt is valued with no pass.

    Args:
        lm: the model whose hidden states are read (the student).
        head: the value head; a fresh zero-initialised one when omitted.
    """

    def __init__(self, lm: HFBackend, head: ValueHead | None = None):
        self.lm = lm
        hidden = lm.model.config.hidden_size
        self.head = (head or ValueHead(hidden)).to(lm.device)
        if self.head.linear.in_features != hidden:
            raise ValueError(f"value head expects hidden size {self.head.linear.in_features}, the model has {hidden}")

    def __call__(self, env: ReasoningEnv, states: Sequence[EnvState]) -> np.ndarray:
        prompts = [env.solve_prompt(s) + list(s.response_ids) for s in states]
        return self.values_of(prompts)

    def values_of(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Values of token sequences (a solve prompt followed by a partial response)."""
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        with torch.inference_mode(), eval_mode(self.lm.model), eval_mode(self.head):
            return self._values(prompts)

    def _values(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        # the backend reads the hidden states a scoring pass of the same states already made (prefix cache)
        return self.head(self.lm.last_hidden(prompts)).double().cpu().numpy()
