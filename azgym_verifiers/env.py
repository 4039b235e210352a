"""The environment: verifiers' single-agent env, with the agent's runtime on this machine by default.

verifiers runs an agent's harness in a Prime sandbox unless told otherwise. The azgym harness only
makes one HTTP call from the eval's own process, so the agent's runtime defaults to a local
subprocess here (no sandbox, no account); ``--env.agent.runtime.type`` still picks another.
"""

from __future__ import annotations

import verifiers.v1 as vf


class AzgymEnvConfig(vf.SingleAgentEnvConfig):
    """The single agent seat, its runtime local by default (``--env.agent.*``)."""

    agent: vf.AgentConfig = vf.AgentConfig(runtime=vf.SubprocessConfig())


class AzgymEnv(vf.SingleAgentEnv, vf.Env[AzgymEnvConfig]):
    """One agent answers each problem (verifiers' ``SingleAgentEnv``), configured by :class:`AzgymEnvConfig`."""
