"""Batched PUCT Monte Carlo tree search over flat arrays, with numba kernels."""

from agents.mcts.agent import MCTSAgent
from agents.mcts.env_model import EnvSearchModel
from agents.mcts.search import MCTS, Expansion, SearchConfig, SearchModel, SearchResult, Step
from agents.mcts.tree import Tree, new_tree

__all__ = [
    "MCTS",
    "SearchConfig",
    "MCTSAgent",
    "EnvSearchModel",
    "Expansion",
    "SearchModel",
    "SearchResult",
    "Step",
    "Tree",
    "new_tree",
]
