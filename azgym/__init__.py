"""azgym: a Gymnasium environment for search-guided RL on LLM reasoning.

Importing the package registers the environments::

    import gymnasium as gym
    import azgym

    env = gym.make("AZLLM-GSM8K-v0", data="path/to/gsm8k")

Without the import, Gymnasium's module prefix does it: ``gym.make("azgym:AZLLM-GSM8K-v0", ...)``.
"""

from gymnasium.envs.registration import register, registry

from azgym.env import EnvState, ReasoningEnv

__all__ = ["EnvState", "ReasoningEnv"]
__version__ = "0.1.0"

_ENVIRONMENTS = [
    dict(id="AZLLM-GSM8K-v0", entry_point="azgym.env:ReasoningEnv", kwargs={"task": "gsm8k"}),
    dict(id="AZLLM-Arithmetic-v0", entry_point="azgym.env:ReasoningEnv", kwargs={"task": "arithmetic"}),
    dict(id="AZLLM-Countdown-v0", entry_point="azgym.env:ReasoningEnv", kwargs={"task": "countdown"}),
]

for _spec in _ENVIRONMENTS:
    if _spec["id"] not in registry:
        register(**_spec)
