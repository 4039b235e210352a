"""The single-turn harness: one chat completion per task, run in the eval's own process.

verifiers' built-in tool-less harness (``null``) runs a chat program through ``uv`` in the rollout's
runtime, which downloads its dependencies on first use. A math answer needs one model call and no
tools, so this harness makes that call itself, through the interception server (``endpoint`` with
the rollout's ``secret``) as verifiers' ``Harness.launch`` contract asks: the call is recorded in the
trace like any other, and nothing is installed or launched. The system message (the task's solve
prompt) and the question go out as two messages, as :func:`azgym.prompts.solve_messages` builds them.
"""

from __future__ import annotations

import verifiers.v1 as vf
from openai import AsyncOpenAI

from azgym.prompts import solve_messages


class AzgymHarness(vf.Harness[vf.HarnessConfig]):
    """Ask the model once: the solve prompt's system message and the question; its reply is the answer."""

    APPENDS_SYSTEM_PROMPT = True  # the solve prompt's system message goes out as a system message
    EXECUTES_CODE = False  # the model gets no tools and nothing runs
    NEEDS_CONTAINER = False

    async def launch(
        self,
        ctx: vf.ModelContext,
        trace: vf.Trace,
        runtime: vf.Runtime,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: vf.TaskData,
    ) -> vf.ProgramResult:
        system, prompt = self.resolve_text_prompt(data)
        # the eval applies its sampling settings (--sampling.*) to the request on its way upstream
        async with AsyncOpenAI(base_url=endpoint, api_key=secret, max_retries=2) as client:
            reply = await client.chat.completions.create(model=ctx.model, messages=solve_messages(system, prompt or ""))
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        return vf.ProgramResult(exit_code=0, stdout=text, stderr="")
