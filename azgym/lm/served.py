"""A model behind any OpenAI-compatible server: the :class:`~azgym.lm.base.LanguageModel` protocol over HTTP.

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000          # a GPU
    transformers serve runs/export/step-12 --port 8000      # a CPU
    python scripts/selfplay.py --teachers "http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct,smollm2-135m-instruct"

A served teacher is named ``URL#MODEL`` (:func:`parse_served`). Requests go to ``POST {URL}/completions``
(the legacy text-completions API that vLLM, SGLang, llama.cpp's server, Ollama and ``transformers serve``
all speak) with the standard fields only: ``model, prompt, max_tokens, temperature, stop, seed, n,
logprobs``. The API key, where a server wants one, comes from an environment variable
(``OPENAI_API_KEY`` unless ``api_key_env`` names another), never from a flag or a file of the run.

Prompts are text. With the served model's tokenizer available here (``tokenizer=``, else the model
name when it is a local directory, a known name or a cached Hub id) the chat template is applied here
and the teacher is prompted like a local one; without it, prompts are plain text in UTF-8 bytes as
"token ids" and the ensemble prompts the teacher few-shot (as a base model), which any server takes.
Either way the ensemble re-tokenises a sample's text with the scoring model's tokenizer, as it does
for local teachers with other tokenizers; priors are scored by the local scoring model.

What servers differ in, and what this client does about it:

- ``n``: vLLM and SGLang return ``n`` choices; ``transformers serve`` ignores ``n`` and returns one. A
  short answer is topped up with single-sample requests (seeds derived from the prompt's seed), and
  after the first short answer every prompt is sent as ``n`` single requests.
- Stop strings: ``transformers serve`` keeps the matched stop string in the text; vLLM drops it and
  names it in ``stop_reason`` (SGLang in ``matched_stop``). A sample whose text holds a stop string ends
  there ("stop"); one whose choice names the matched string gets it appended ("stop"); ``length`` is
  the budget; anything else is the model's end of sequence ("eos"). A server that drops the stop string
  without naming it makes every step look final: pass ``server_stop=False`` for it (the budget is
  generated and cut here at the first stop string).
- Per-token log-probs (``logprobs=1``): kept where the server returns one per token of the re-encoded
  text (vLLM does), else empty. Prompt log-probs (:meth:`OpenAIBackend.score`) need ``echo`` with
  ``logprobs`` (vLLM has them, ``transformers serve`` does not, and the error says so).

Requests run concurrently (``max_concurrency``), each retried with exponential backoff on connection
errors, timeouts, 429 and 5xx; what still fails raises :class:`ServerError` in one line naming the URL
and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from azgym.errors import UserError
from azgym.lm.base import Generation, Prompt, TokenizerMixin

logger = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)


class ServerError(UserError, RuntimeError):
    """A served model that cannot answer: unreachable, unknown model, or a refused request."""


def is_served(name: str) -> bool:
    """Whether a teacher name is a served model (``http://...`` or ``https://...``)."""
    return name.startswith(("http://", "https://"))


def parse_served(spec: str) -> tuple[str, str]:
    """``URL#MODEL`` → ``(base URL, model)``; a one-line error for what cannot be right.

    >>> parse_served("http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct")
    ('http://localhost:8000/v1', 'Qwen/Qwen2.5-7B-Instruct')
    """
    url, sep, model = spec.partition("#")
    parts = urlsplit(url)
    if not sep or not model.strip():
        raise ValueError(
            f"served teacher {spec!r} names no model: write URL#MODEL, e.g. http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"served teacher {spec!r}: {url!r} is not an http(s) URL with a host")
    if parts.username or parts.password or parts.query:
        raise ValueError(
            f"served teacher {spec!r}: keep credentials and query strings out of the URL (it is saved in the "
            "run's config.json); put the API key in $OPENAI_API_KEY"
        )
    return url.rstrip("/"), model.strip()


class ByteTokenizer:
    """UTF-8 bytes as token ids, for a served model whose tokenizer is not available here."""

    chat_template = None
    eos_token_id = 256
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return bytes(int(t) for t in token_ids if 0 <= int(t) < 256).decode("utf-8", errors="replace")


def _local_tokenizer(model: str):
    """The served model's tokenizer where this machine has it (local directory, known name, Hub cache), else None."""
    try:
        from transformers import AutoTokenizer

        from azgym.lm.registry import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(model))
    except Exception as err:  # noqa: BLE001 - any failure means: prompt it as plain text
        logger.info("no local tokenizer for served model %s (%s); prompting it with plain text", model, err)
        return None


class OpenAIBackend(TokenizerMixin):
    """A language model served over HTTP by an OpenAI-compatible server.

    Args:
        base_url: the server's API root, e.g. ``http://localhost:8000/v1``.
        model: the model name the server serves (its ``/models`` list).
        tokenizer: a tokenizer object or name for prompts and chat templates (default: ``model``'s, where
            available here; else plain-text prompts).
        api_key_env: the environment variable holding the API key (unset: no key sent).
        max_concurrency: requests in flight at once.
        timeout: seconds one request may take.
        retries: further tries of a request after a connection error, timeout, 429 or 5xx.
        backoff: seconds before the first retry, doubled each time.
        server_stop: send stop strings to the server (else cut here; see the module docstring).
        check: ask ``/models`` now, so that a wrong URL or model fails before any slow work.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer=None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        server_stop: bool = True,
        check: bool = True,
        name: str = "",
    ):
        if max_concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_concurrency >= 1, retries >= 0, timeout > 0 and backoff >= 0 are required")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.name = name or f"{self.base_url}#{model}"
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.max_concurrency, self.timeout, self.retries, self.backoff = max_concurrency, timeout, retries, backoff
        self.server_stop = server_stop
        if isinstance(tokenizer, str):
            tokenizer = _local_tokenizer(tokenizer)
        self.tokenizer = tokenizer or _local_tokenizer(model) or ByteTokenizer()
        eos = self.tokenizer.eos_token_id
        self.eos_token_id = int(eos if eos is not None else ByteTokenizer.eos_token_id)
        self.vocab_size = int(getattr(self.tokenizer, "vocab_size", 0) or len(self.tokenizer))
        self.requests = 0  # completion requests sent (retries included)
        self._lock = threading.Lock()
        self.generated_tokens = 0  # completion tokens the server reported
        self._n_supported = True
        if check:
            self.check()

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> OpenAIBackend:
        """A backend from a teacher name ``URL#MODEL``."""
        url, model = parse_served(spec)
        return cls(url, model, name=spec, **kwargs)

    def check(self) -> list[str]:
        """The models the server lists; a :class:`ServerError` if it is unreachable or lacks ``self.model``."""
        listed = [m.get("id") for m in self._request("GET", "/models").get("data", []) if isinstance(m, dict)]
        if listed and self.model not in listed:
            raise ServerError(
                f"{self.base_url} does not serve model {self.model!r} (it serves: {', '.join(map(str, listed))}); "
                "fix the name after '#' in the teacher"
            )
        return listed

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_tokens: int | Sequence[int] = 64,
        stop: Sequence[str] = (),
        temperature: float | Sequence[float] = 1.0,
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Generation]]:
        rows = self._per_prompt(prompts, n, max_tokens, temperature, seed)
        texts = [p if isinstance(p, str) else self.decode(ids) for p, (ids, _, _, _) in zip(prompts, rows, strict=True)]
        stop = tuple(stop)
        results: list[list[Generation]] = [[] for _ in rows]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            if self._n_supported or n == 1:
                first = [
                    pool.submit(self._complete, t, b, temp, s, stop, n)
                    for t, (_, b, temp, s) in zip(texts, rows, strict=True)
                ]
                for i, future in enumerate(first):
                    results[i] = future.result()[:n]
            short = [(i, j) for i, r in enumerate(results) for j in range(len(r), n)]
            if short and n > 1 and self._n_supported:
                logger.info("%s returned fewer than n=%d samples; sending one request per sample", self.name, n)
                self._n_supported = False
            more = {
                (i, j): pool.submit(
                    self._complete, texts[i], rows[i][1], rows[i][2], _sample_seed(rows[i][3], j), stop, 1
                )
                for i, j in short
            }
            for (i, _), future in sorted(more.items()):
                results[i].extend(future.result()[:1])
        return results

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        """Continuation log-probs from the server's prompt log-probs (``echo`` + ``logprobs``), where it has them.

        The server tokenises prompt + continuation itself; the continuation's log-probs are those of the
        server's tokens after the prompt's text, so they line up with this backend's tokens only when its
        tokenizer is the served model's."""
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            head = p if isinstance(p, str) else self.decode(p)
            tail = c if isinstance(c, str) else self.decode(c)
            body = {
                "model": self.model,
                "prompt": head + tail,
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "logprobs": 0,
            }
            choice = self._choices(self._request("POST", "/completions", body))[0]
            logprobs = choice.get("logprobs") or {}
            offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
            if not offsets or not values:
                raise ServerError(
                    f"{self.base_url} returns no prompt log-probs (echo with logprobs); score with a local model "
                    "(the teachers' priors always are)"
                )
            end = len(head) + len(tail)  # the echo ends with one generated token, which is not the continuation's
            kept = [v for o, v in zip(offsets, values, strict=False) if len(head) <= o < end and v is not None]
            out.append(np.array(kept, np.float32))
        return out

    def _complete(self, text: str, budget: int, temperature: float, seed, stop: tuple[str, ...], n: int):
        body = {
            "model": self.model,
            "prompt": text,
            "max_tokens": max(int(budget), 1),
            "temperature": temperature,
            "n": n,
            "logprobs": 1,
        }
        if seed is not None:
            body["seed"] = int(seed) % (2**31)
        if stop and self.server_stop:
            body["stop"] = list(stop)[:4]  # the API takes at most four
        reply = self._request("POST", "/completions", body)
        usage = reply.get("usage") or {}
        with self._lock:
            self.generated_tokens += int(usage.get("completion_tokens") or 0)
        return [self._generation(choice, stop) for choice in self._choices(reply)]

    def _choices(self, reply: dict) -> list[dict]:
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise ServerError(f"{self.base_url} answered without choices: {json.dumps(reply)[:200]}")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _generation(self, choice: dict, stop: tuple[str, ...]) -> Generation:
        text, reason = finish(choice, stop)
        ids = tuple(self.encode(text))
        logprobs = tuple((choice.get("logprobs") or {}).get("token_logprobs") or ())
        if len(logprobs) != len(ids) or any(v is None for v in logprobs):
            logprobs = ()
        return Generation(text, ids, tuple(float(v) for v in logprobs), reason)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request with retries; the decoded JSON answer, or a one-line :class:`ServerError`."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            if method == "POST":
                with self._lock:
                    self.requests += 1
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as err:
                detail = _detail(err)
                if err.code not in RETRY_STATUS or attempt == self.retries:
                    raise ServerError(_http_message(url, self.model, err.code, detail)) from None
                why = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    reason = getattr(err, "reason", err)
                    raise ServerError(
                        f"{url} is unreachable after {attempt + 1} tries ({reason}); start the server or fix the "
                        "URL (teacher URL#MODEL, e.g. http://localhost:8000/v1#MODEL)"
                    ) from None
                why = str(getattr(err, "reason", err))
            except json.JSONDecodeError:
                raise ServerError(
                    f"{url} answered with something that is not JSON; is this an OpenAI-compatible API root?"
                ) from None
            delay = self.backoff * 2**attempt
            logger.warning("%s: %s; retry %d of %d in %.1f s", url, why, attempt + 1, self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


def finish(choice: dict, stop: Sequence[str]) -> tuple[str, str]:
    """A choice's text and finish reason in this project's terms (``stop`` keeps the stop string).

    >>> finish({"text": "2 + 2 = 4\\nmore", "finish_reason": "length"}, ["\\n"])
    ('2 + 2 = 4\\n', 'stop')
    >>> finish({"text": "x = 4", "finish_reason": "stop", "stop_reason": "\\n"}, ["\\n"])
    ('x = 4\\n', 'stop')
    >>> finish({"text": "#### 4", "finish_reason": "stop", "stop_reason": None}, ["\\n"])
    ('#### 4', 'eos')
    """
    text = str(choice.get("text") or "")
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    if ends:
        return text[: min(ends)], "stop"
    if choice.get("finish_reason") == "length":
        return text, "length"
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if isinstance(matched, str) and matched:
        return text + matched, "stop"
    return text, "eos"


def _sample_seed(seed, j: int) -> int | None:
    """Sample ``j``'s seed when samples are requested one by one: sample 0 keeps the prompt's seed, so it is the
    same whether or not ``n`` was sent (None stays unseeded)."""
    if seed is None or j == 0:
        return seed
    return int.from_bytes(hashlib.blake2b(f"{seed}|{j}".encode(), digest_size=4).digest(), "little")


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode() or "{}")
    except (ValueError, OSError):
        return ""
    found = body.get("detail") or body.get("error") or body.get("message") or ""
    if isinstance(found, dict):
        found = found.get("message", "")
    return " ".join(str(found).split())[:300]


def _http_message(url: str, model: str, code: int, detail: str) -> str:
    said = f": {detail}" if detail else ""
    if code in (401, 403):
        return f"{url} refused the request (HTTP {code}{said}); set the API key in $OPENAI_API_KEY"
    if code == 404 or (code == 400 and model in detail):
        return f"{url} (HTTP {code}{said}); check that the URL ends at the API root (…/v1) and the model {model!r}"
    return f"{url} refused the request (HTTP {code}{said})"
