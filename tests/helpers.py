"""Test helpers: a tiny seeded Llama, a scripted language model for exact reward arithmetic, a one-step bandit,
``torchrun`` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from agents.mcts.search import Expansion, Step
from azgym.lm.base import Generation, broadcast

REPO = Path(__file__).resolve().parents[1]


def send_json(handler, code: int, payload: dict) -> None:
    """Answer an ``http.server`` request with ``payload`` as JSON (the test servers' replies)."""
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model: str, log: Path | None = None, startup_s: float = 180) -> Iterator[int]:
    """``transformers serve MODEL`` on a free local port (offline, on the CPU) until the block ends; yields the port.
    With ``log``, the server's output (a line per request) goes there."""
    port = free_port()
    serve = str(Path(sys.executable).with_name("transformers"))
    cmd = [serve, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "transformers serve did not start"
                time.sleep(1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        if log:
            out.close()


def torchrun(nproc: int, script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``script`` in ``nproc`` processes started by ``python -m torch.distributed.run`` on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), str(script), *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


# the shape of the tiny test models: 2 layers, grouped-query attention (4 heads, 2 for keys and values)
TINY_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)


def tiny_llama(vocab_size: int, seed: int = 0):
    """A 2-layer random Llama: a real transformers model with no knowledge, built in a second."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **TINY_SHAPE,
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(vocab_size: int, seed: int = 0):
    """A 2-layer random Qwen2 (the tiny Llama's shape): biased q/k/v, the biases drawn so that they matter."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, **TINY_SHAPE)).eval()
    with torch.no_grad():  # they start at zero
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


class ScriptedLM:
    """Characters as tokens; each prompt's samples come from a script keyed by the response so far.

    ``script`` maps the response text written so far to a list of (text, finished) steps; the
    i-th sample for that state is ``steps[i % len(steps)]``. Every token scores ``token_logprob``.
    """

    name = "scripted"
    vocab_size = 256
    eos_token_id = 0

    def __init__(self, script: dict[str, list[tuple[str, bool]]], token_logprob: float = -0.5, marker: str = "\x01"):
        self.script = script
        self.token_logprob = token_logprob
        self.marker = marker  # separates the prompt from the response inside a prompt
        self.counts: dict[str, int] = {}
        self.generate_calls = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 256 for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def chat_prompt(self, messages) -> list[int]:
        return self.encode(messages[-1]["content"] + self.marker)

    def generate(self, prompts, *, n=1, max_tokens=64, stop=(), temperature=1.0, seed=None):
        self.generate_calls += 1
        budgets = broadcast(max_tokens, len(prompts), "max_tokens")
        out = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            response = self.decode(prompt).split(self.marker, 1)[1]
            steps = self.script[response]
            samples = []
            for _ in range(n):
                count = self.counts.get(response, 0)
                self.counts[response] = count + 1
                text, finished = steps[count % len(steps)]
                ids = tuple(self.encode(text))[:budget]
                reason = "eos" if finished else ("length" if len(ids) >= budget and not text.endswith("\n") else "stop")
                samples.append(Generation(self.decode(ids), ids, (self.token_logprob,) * len(ids), reason))
            out.append(samples)
        return out

    def score(self, prompts, continuations):
        return [np.full(len(c), self.token_logprob, dtype=np.float32) for c in continuations]


class Bandit:
    """A root whose every action ends the episode with a known reward."""

    state_dtype = object

    def __init__(self, rewards, prior=None, valid=None, root_terminal=False):
        self.rewards = np.asarray(rewards, np.float64)
        self.num_actions = len(rewards)
        self.prior = np.full(self.num_actions, 1.0 / self.num_actions) if prior is None else np.asarray(prior)
        self.valid = np.ones(self.num_actions, bool) if valid is None else np.asarray(valid, bool)
        self.root_terminal = root_terminal

    def evaluate(self, states):
        m = len(states)
        return Expansion(
            prior=np.tile(self.prior, (m, 1)).astype(np.float32),
            valid=np.tile(self.valid, (m, 1)),
            value=np.zeros(m),
            terminal=np.full(m, self.root_terminal),
        )

    def step(self, states, actions):
        m = len(states)
        children = np.empty(m, dtype=object)
        children[:] = [("leaf", int(a)) for a in actions]
        x = Expansion(np.zeros((m, self.num_actions), np.float32), np.zeros((m, self.num_actions), bool),
                      np.zeros(m), np.ones(m, bool))  # fmt: skip
        return Step(states=children, reward=self.rewards[np.asarray(actions)], expansion=x)


def roots(b):
    out = np.empty(b, dtype=object)
    out[:] = ["root"] * b
    return out
