"""azgym's math tasks as a verifiers (>= 0.4) environment, for ``vf-eval`` against any OpenAI-compatible endpoint.

``vf-eval azgym-verifiers`` imports this package (verifiers turns the id's dashes into underscores) and
takes the ``Taskset``, ``Harness`` and ``Env`` subclasses it exports in ``__all__``: :class:`AzgymTaskset`
(problems, solve prompt and rubric, :mod:`azgym_verifiers.taskset`), :class:`AzgymHarness` (one chat
completion per problem, :mod:`azgym_verifiers.harness`) and :class:`AzgymEnv` (one agent, run locally).
In Python, :func:`load_environment` builds the same environment from the seed system's keyword arguments.
Install with ``pip install -e ".[verifiers]"``. A top-level package beside ``azgym/`` because verifiers imports
a taskset id as one module name (``azgym.verifiers`` would not resolve), and so that ``azgym`` itself never
imports verifiers.
"""

from azgym_verifiers.env import AzgymEnv
from azgym_verifiers.harness import AzgymHarness
from azgym_verifiers.taskset import AzgymTask, AzgymTaskset, load_environment

__all__ = ["AzgymEnv", "AzgymHarness", "AzgymTask", "AzgymTaskset", "load_environment"]
