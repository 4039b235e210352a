"""The verifiers adapter (``azgym_verifiers``): dataset and rubric in-process with exact rewards, then
``vf-eval`` end to end, against a scripted OpenAI-compatible stub and (slow) against ``transformers
serve`` of the real SmolLM2."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

vf = pytest.importorskip("verifiers.v1", reason="the adapter needs verifiers >= 0.4: pip install -e '.[verifiers]'")

import azgym_verifiers  # noqa: E402
from azgym.prompts import TASK_SYSTEM_PROMPTS  # noqa: E402
from azgym_verifiers import scoring  # noqa: E402
from azgym_verifiers.taskset import CORRECTNESS_WEIGHT, PERPLEXITY_WEIGHT  # noqa: E402
from helpers import ScriptedLM, send_json, transformers_serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VF_EVAL = Path(sys.executable).with_name("vf-eval")


def _score(task, reply: str) -> vf.Trace:
    trace = vf.Trace(
        task=vf.TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
        agent=vf.AgentInfo(config=vf.AgentConfig()),
        root_reply=reply,
    )
    asyncio.run(task.score(trace))
    return trace


@pytest.fixture
def scripted_scorer(monkeypatch):
    """Every response token scores log-prob -0.5 under the scoring model: perplexity reward exp(-0.5)."""
    loaded = []

    def load(name, device="cpu"):
        loaded.append((name, device))
        return ScriptedLM({}, token_logprob=-0.5)

    monkeypatch.setattr(scoring, "load_scorer", load)
    return loaded


def test_dataset_is_azgyms_problems_with_the_solve_prompt(gsm8k_dir, gsm8k_problems):
    env = azgym_verifiers.load_environment("gsm8k", data=str(gsm8k_dir), num_examples=3)
    tasks = list(env.taskset)
    assert [t.data.prompt for t in tasks] == [p.question for p in gsm8k_problems[:3]]
    assert [t.data.answer for t in tasks] == [p.gold for p in gsm8k_problems[:3]] and tasks[0].data.answer == "18"
    assert {t.data.system_prompt for t in tasks} == {TASK_SYSTEM_PROMPTS["gsm8k"]}
    assert len({t.key for t in tasks}) == 3 and isinstance(env, azgym_verifiers.AzgymEnv)

    bare = azgym_verifiers.load_environment("arithmetic", data="add2", num_examples=2, prompt="bare")
    arithmetic = list(bare.taskset)
    assert arithmetic[0].data.prompt.startswith("What is ") and arithmetic[0].data.system_prompt is None
    with pytest.raises(ValueError, match="'example' is a chat of several messages"):
        list(azgym_verifiers.load_environment("arithmetic", data="add2", num_examples=2, prompt="example").taskset)


def test_rubric_weights_correctness_and_perplexity_exactly(gsm8k_dir, scripted_scorer):
    [task] = azgym_verifiers.load_environment("gsm8k", data=str(gsm8k_dir), num_examples=1).taskset  # gold 18
    ppl = math.exp(-0.5)
    cases = {  # reply -> (correct, perplexity reward, format_ok)
        "16 - 3 - 4 = 9 eggs.\n9 * 2 = 18.\n#### 18": (1.0, ppl, 1.0),
        "#### $18.00": (1.0, ppl, 1.0),
        "16 - 3 = 13.\n#### 26": (0.0, ppl, 1.0),
        "She makes 18 dollars.": (0.0, ppl, 0.0),  # no '#### ' marker: strict grading says no
        "": (0.0, 0.0, 0.0),
    }
    for reply, (correct, perplexity, format_ok) in cases.items():
        trace = _score(task, reply)
        assert trace.rewards["correct"] == vf.Reward(score=correct, weight=0.4), reply
        assert (trace.rewards["perplexity"].score, trace.rewards["perplexity"].weight) == (
            pytest.approx(perplexity),
            0.6,
        )
        assert trace.reward == pytest.approx(CORRECTNESS_WEIGHT * correct + PERPLEXITY_WEIGHT * perplexity)
        assert trace.metrics == {"format_ok": format_ok}
    assert scripted_scorer[0] == ("smollm2-135m-instruct", "cpu")  # the local tier's model, loaded lazily


def test_flexible_answers_and_no_student_model(gsm8k_dir, scripted_scorer):
    env = azgym_verifiers.load_environment(
        "gsm8k", data=str(gsm8k_dir), num_examples=1, answer="flexible", use_student_model=False
    )
    [task] = env.taskset
    trace = _score(task, "She makes 18 dollars.")
    assert trace.rewards == {"correct": vf.Reward(score=1.0, weight=0.4)} and trace.reward == pytest.approx(0.4)
    assert scripted_scorer == []  # no scoring model was loaded


def test_bad_settings_name_the_choices():
    with pytest.raises(ValueError, match="known tasks: arithmetic, countdown, gsm8k"):
        azgym_verifiers.load_environment("gsm9k")
    with pytest.raises(ValueError, match="known tiers: local, free, production"):
        azgym_verifiers.load_environment("arithmetic", tier="huge")


def test_perplexity_reward_is_inverse_perplexity_after_the_solve_prompt():
    lm = ScriptedLM({}, token_logprob=-1.0)
    assert scoring.response_inverse_perplexity(lm, "sys", "What is 2 + 2?", "#### 4") == pytest.approx(math.exp(-1))
    assert scoring.response_inverse_perplexity(lm, None, "What is 2 + 2?", "") == 0.0
    assert scoring.scoring_model_name("production") == "Qwen/Qwen2.5-7B-Instruct"
    assert scoring.scoring_model_name("free", "runs/merged") == "runs/merged"


class _ArithmeticStub(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers "What is a + b?" right when a + b is even."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        a, b = map(int, re.findall(r"\d+", body["messages"][-1]["content"]))
        total = a + b if (a + b) % 2 == 0 else a + b + 1
        reply = {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"{a} + {b} = {total}\n#### {total}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }  # fmt: skip
        send_json(self, 200, reply)

    def log_message(self, *args):
        pass


def _vf_eval(out: Path, port: int, model: str, *flags: str, timeout: float = 300) -> list[dict]:
    if not VF_EVAL.is_file():
        pytest.skip(f"no vf-eval beside {sys.executable}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "local"}  # fmt: skip
    cmd = [str(VF_EVAL), "azgym-verifiers", "-n", "3", "--model", model, "--client.base-url",
           f"http://127.0.0.1:{port}/v1", "--client.api-key-var", "OPENAI_API_KEY", "--no-push", "--no-rich",
           "--run.name", "test", "-o", str(out), *flags]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "test" / "traces.jsonl").read_text().splitlines()]


def test_vf_eval_runs_the_env_end_to_end_against_a_stub_endpoint(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ArithmeticStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        episodes = _vf_eval(tmp_path, server.server_address[1], "stub", "--env.taskset.task-name", "arithmetic",
                            "--env.taskset.task.use-student-model", "false", "--sampling.max-tokens", "32")  # fmt: skip
    finally:
        server.shutdown()
    assert len(episodes) == 3 and all(e["ok"] for e in episodes)
    for episode in episodes:
        [trace] = episode["traces"]
        gold = int(trace["task"]["data"]["answer"])
        assert trace["rewards"] == {"correct": {"score": float(gold % 2 == 0), "weight": 0.4}}
    request = _ArithmeticStub.requests[0]
    assert request["messages"][0] == {"role": "system", "content": TASK_SYSTEM_PROMPTS["arithmetic"]}
    assert request["max_tokens"] == 32 and request["model"] == "stub"


@pytest.mark.slow
def test_vf_eval_against_transformers_serve_of_smollm2(tmp_path):
    pytest.importorskip("fastapi", reason="`transformers serve` needs fastapi: pip install -e '.[verifiers]'")
    from azgym.lm.registry import DEFAULT_MODEL, resolve_model

    model = resolve_model(DEFAULT_MODEL)
    with transformers_serve(model) as port:
        episodes = _vf_eval(tmp_path, port, model, "--env.taskset.task-name", "arithmetic",
                            "--sampling.max-tokens", "48", "--sampling.temperature", "0")  # fmt: skip
    assert len(episodes) == 3 and all(e["ok"] for e in episodes)
    for episode in episodes:
        [trace] = episode["traces"]
        rewards = trace["rewards"]
        assert rewards["correct"]["score"] in (0.0, 1.0) and 0.0 < rewards["perplexity"]["score"] <= 1.0
        assert trace["nodes"][-1]["message"]["content"].strip()  # the model answered
