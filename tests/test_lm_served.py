"""OpenAIBackend against a small real OpenAI-compatible server on 127.0.0.1: the requests it builds, `n`
topped up where a server ignores it, stop strings as servers report them, retries, one-line errors, served
teachers in an ensemble (and dropped when their server dies), and the settings that name them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from azgym.config import ConfigError, EnvConfig
from azgym.lm.served import ByteTokenizer, OpenAIBackend, ServerError, parse_served
from azgym.teachers import ProposalRequest, TeacherEnsemble, load_teachers
from helpers import REPO, send_json, transformers_serve


class Completions(BaseHTTPRequestHandler):
    """``/v1/models`` lists ``toy``; ``/v1/completions`` answers ``step <seed>\\nmore`` for each of ``n``
    choices (one only where ``n_supported`` is off), in the style of ``stop_style``:
    ``keep`` (the stop string stays in the text, as transformers serve), ``vllm`` (dropped and named in
    ``stop_reason``) or ``eos`` (the model ends: ``#### 4``). The first ``fail`` requests get HTTP 503."""

    requests: list[dict] = []
    headers_seen: list[dict] = []
    n_supported = True
    stop_style = "keep"
    fail = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        self._reply(200, {"object": "list", "data": [{"id": "toy", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.requests.append(body)
        cls.headers_seen.append(dict(self.headers))
        if cls.fail > 0:
            cls.fail -= 1
            return self._reply(503, {"error": {"message": "warming up"}})
        if body.get("model") != "toy":
            return self._reply(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
        if body.get("echo"):
            return self._echo(body["prompt"])
        choices = [self._choice(body, j) for j in range(body.get("n", 1) if cls.n_supported else 1)]
        self._reply(200, {"object": "text_completion", "choices": choices, "usage": {"completion_tokens": 3}})

    def _choice(self, body: dict, j: int) -> dict:
        if self.stop_style == "eos":
            return {"index": j, "text": "#### 4", "finish_reason": "stop", "stop_reason": None}
        text = f"step {body.get('seed')}-{j}\nmore"
        if self.stop_style == "keep" and body.get("stop"):
            return {"index": j, "text": text[: text.index("\n") + 1], "finish_reason": "stop"}
        if self.stop_style == "vllm" and body.get("stop"):
            return {"index": j, "text": text[: text.index("\n")], "finish_reason": "stop", "stop_reason": "\n"}
        return {"index": j, "text": text[: body["max_tokens"]], "finish_reason": "length"}

    def _echo(self, prompt: str):
        """The prompt in 2-character tokens, then one generated token (as vLLM echoes with max_tokens=1)."""
        offsets = list(range(0, len(prompt), 2)) + [len(prompt)]
        logprobs = {"text_offset": offsets, "token_logprobs": [None] + [-0.5] * (len(offsets) - 2) + [-9.0]}
        self._reply(200, {"choices": [{"index": 0, "text": prompt + "Z", "logprobs": logprobs}]})

    def _reply(self, code: int, payload: dict):
        send_json(self, code, payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Completions.requests, Completions.headers_seen = [], []
    Completions.n_supported, Completions.stop_style, Completions.fail = True, "keep", 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Completions)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def backend(url: str, **kwargs) -> OpenAIBackend:
    return OpenAIBackend(url, "toy", tokenizer=ByteTokenizer(), retries=kwargs.pop("retries", 2), backoff=0, **kwargs)


def test_a_request_carries_the_standard_fields_and_the_key_from_the_environment(server, monkeypatch):
    _, url = server
    monkeypatch.setenv("AZGYM_TEST_KEY", "sekret")
    lm = backend(url, api_key_env="AZGYM_TEST_KEY")
    [[sample]] = lm.generate(["What is 2 + 2?"], max_tokens=7, stop=["\n"], temperature=0.5, seed=11)
    body = Completions.requests[-1]
    assert body == {
        "model": "toy",
        "prompt": "What is 2 + 2?",
        "max_tokens": 7,
        "temperature": 0.5,
        "n": 1,
        "logprobs": 1,
        "seed": 11,
        "stop": ["\n"],
    }
    assert Completions.headers_seen[-1]["Authorization"] == "Bearer sekret"
    assert sample.text == "step 11-0\n" and sample.finish_reason == "stop"
    assert sample.token_ids == tuple(b"step 11-0\n") and lm.generated_tokens == 3
    # token-id prompts are sent as their text; no key variable set: no Authorization header
    monkeypatch.delenv("AZGYM_TEST_KEY")
    backend(url, api_key_env="AZGYM_TEST_KEY").generate([list(b"hi")], max_tokens=3)
    assert Completions.requests[-1]["prompt"] == "hi" and "Authorization" not in Completions.headers_seen[-1]


def test_n_is_batched_and_topped_up_with_single_requests_where_the_server_ignores_it(server):
    _, url = server
    lm = backend(url)
    out = lm.generate(["a", "b"], n=3, max_tokens=5, stop=["\n"], seed=[1, 2])
    assert [len(o) for o in out] == [3, 3] and lm.requests == 2
    assert [s.text for s in out[0]] == ["step 1-0\n", "step 1-1\n", "step 1-2\n"]

    Completions.n_supported = False
    lm = backend(url)
    out = lm.generate(["a", "b"], n=3, max_tokens=5, stop=["\n"], seed=[1, 2])
    assert [len(o) for o in out] == [3, 3] and lm.requests == 2 + 4  # one answer each, then two more each
    assert len({s.text for s in out[0]}) == 3  # each extra sample has its own seed
    again = lm.generate(["a"], n=3, max_tokens=5, stop=["\n"], seed=1)
    assert len(again[0]) == 3 and lm.requests == 6 + 3  # from now on: one request per sample
    assert all(r["n"] == 1 for r in Completions.requests[-3:])
    assert again[0][0].text == out[0][0].text == "step 1-0\n"  # sample 0 keeps the prompt's seed either way


@pytest.mark.parametrize(
    ("style", "server_stop", "text", "reason"),
    [
        ("keep", True, "step 5-0\n", "stop"),  # transformers serve keeps the stop string
        ("vllm", True, "step 5-0\n", "stop"),  # vLLM drops it and names it in stop_reason
        ("eos", True, "#### 4", "eos"),  # the model ended its response
        ("keep", False, "step 5-0\n", "stop"),  # cut here when the server is not sent the stop strings
    ],
)
def test_stop_strings_and_endings_read_the_same_from_every_server(server, style, server_stop, text, reason):
    _, url = server
    Completions.stop_style = style
    [[sample]] = backend(url, server_stop=server_stop).generate(["q"], max_tokens=40, stop=["\n"], seed=5)
    assert (sample.text, sample.finish_reason) == (text, reason)
    assert ("stop" in Completions.requests[-1]) == server_stop
    [[short]] = backend(url).generate(["q"], max_tokens=4, seed=5)
    assert (short.text, short.finish_reason) == (("step", "length") if style != "eos" else ("#### 4", "eos"))


def test_5xx_is_retried_with_backoff_and_a_server_that_keeps_failing_is_one_line(server, caplog):
    _, url = server
    lm = backend(url, retries=2)
    Completions.fail = 2
    with caplog.at_level(logging.WARNING, logger="azgym.lm.served"):
        [[sample]] = lm.generate(["q"], max_tokens=5, stop=["\n"], seed=3)
    assert sample.text == "step 3-0\n" and lm.requests == 3
    assert sum("HTTP 503; retry" in r.getMessage() for r in caplog.records) == 2
    Completions.fail = 10
    with pytest.raises(ServerError) as err:
        lm.generate(["q"], max_tokens=5)
    assert "\n" not in str(err.value) and f"{url}/completions" in str(err.value) and "HTTP 503" in str(err.value)


def test_unreachable_server_and_unknown_model_fail_at_once_with_the_fix(server):
    httpd, url = server
    with pytest.raises(ServerError, match=r"does not serve model 'nope' \(it serves: toy\); fix the name after '#'"):
        OpenAIBackend(url, "nope", tokenizer=ByteTokenizer())
    closed = url.replace(str(httpd.server_address[1]), "9")  # the discard port: nothing listens there
    with pytest.raises(ServerError) as err:
        OpenAIBackend(closed, "toy", tokenizer=ByteTokenizer(), retries=1, backoff=0)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{closed}/models is unreachable after 2 tries")
    assert "start the server or fix the URL" in message
    lm = OpenAIBackend(url, "ghost", tokenizer=ByteTokenizer(), check=False)  # a server that lists nothing useful
    with pytest.raises(ServerError, match="HTTP 404: The model `ghost` does not exist.*check that the URL"):
        lm.generate(["q"])


def test_score_reads_prompt_logprobs_where_the_server_echoes_them(server):
    _, url = server
    [scores] = backend(url).score(["abcd"], ["efgh"])
    np.testing.assert_allclose(scores, [-0.5, -0.5])  # the offsets 4 and 6 fall in the continuation


def test_teacher_urls_are_parsed_and_bad_ones_are_config_errors():
    assert parse_served("https://box:8000/v1/#Qwen/Qwen2.5-7B-Instruct") == (
        "https://box:8000/v1",
        "Qwen/Qwen2.5-7B-Instruct",
    )
    for bad, why in [
        ("http://box:8000/v1", "names no model"),
        ("http://u:pw@box/v1#m", "credentials"),
        ("http:///v1#m", "not an http"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_served(bad)
        with pytest.raises(ConfigError, match="teachers"):
            EnvConfig(teachers=f"smollm2-135m-instruct,{bad}")
    assert EnvConfig(teachers="http://box:8000/v1#m,local").teachers.startswith("http://box")


def test_a_served_teacher_proposes_beside_the_local_scorer_and_is_dropped_when_its_server_dies(server, tiny_lm, caplog):
    httpd, url = server
    spec = f"{url}#toy"
    teachers = load_teachers(f"{spec},{tiny_lm.name}", tiny_lm)
    assert [t.name for t in teachers] == [spec, tiny_lm.name] and teachers[0].style == "few_shot"
    ensemble = TeacherEnsemble(tiny_lm, teachers, system_prompt=None, num_right=2, num_wrong=2, refill_rounds=0)
    request = ProposalRequest("p0", "What is 2 + 3?", (), max_tokens=16, seed=1)
    [candidates] = ensemble.propose([request])
    served = [c for c in candidates if c.teacher == spec]
    assert served and Completions.requests, "the served teacher proposed nothing"
    assert all(c.text.startswith("step ") and c.token_ids == tuple(tiny_lm.encode(c.text)) for c in served)
    assert np.isclose(sum(c.prior for c in candidates), 1.0)  # priors scored by the local model

    httpd.shutdown()
    httpd.server_close()
    teachers[0].lm.retries = 0
    with caplog.at_level(logging.WARNING):
        [later] = ensemble.propose([ProposalRequest("p0", "What is 2 + 3?", (), max_tokens=16, seed=2)])
    assert spec in ensemble.dropped and "unreachable" in ensemble.dropped[spec]
    assert later and all(c.teacher == tiny_lm.name for c in later)
    assert any(f"teacher {spec} failed" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_selfplay_iteration_with_a_teacher_served_by_transformers_serve(tmp_path):
    """The default model behind `transformers serve` is the only teacher of a one-iteration run; the local copy
    of the same model is the student and scores the priors."""
    pytest.importorskip("fastapi", reason="`transformers serve` needs fastapi: pip install -e '.[test]'")
    from azgym.lm.registry import DEFAULT_MODEL, resolve_model

    model, log = resolve_model(DEFAULT_MODEL), tmp_path / "serve.log"
    with transformers_serve(model, log=log) as port:
        spec = f"http://127.0.0.1:{port}/v1#{model}"
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "selfplay.py"),
            "--runs-dir",
            str(tmp_path),
            "--run-name",
            "served",
            "--task",
            "arithmetic",
            "--data",
            "add2",
            "--teachers",
            spec,
            "--selfplay",
            "moves",
            "--simulations",
            "1",
            "--iterations",
            "1",
            "--num-examples",
            "2",
            "--group-size",
            "2",
            "--train-steps",
            "1",
            "--eval-size",
            "2",
            "--eval-max-tokens",
            "16",
            "--chunk-tokens",
            "16",
            "--max-depth",
            "3",
            "--max-tokens",
            "48",
            "--no-progress",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "served"
    assert json.loads((run / "config.json").read_text())["env"]["teachers"] == spec
    episodes = [
        json.loads(line) for f in sorted((run / "replay").glob("*.jsonl")) for line in f.read_text().splitlines()
    ]
    assert len(episodes) == 4
    for episode in episodes:  # every episode played to its end: answered, or out of steps / tokens
        assert episode["steps"] and all(step["candidates"] for step in episode["steps"])
        ended = episode["steps"][-1]["response_len"] + len(episode["steps"][-1]["candidates"][0]) > 0
        assert ended and (episode["format_ok"] or episode["truncated"] or episode["response_ids"])
    served = sum('"POST /v1/completions HTTP/1.1" 200' in line for line in log.read_text().splitlines())
    states = sum(len(e["steps"]) for e in episodes)
    assert served >= states, f"{served} requests reached the server for {states} expanded states"
    assert "dropped" not in done.stderr
