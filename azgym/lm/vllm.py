"""vLLM backend (GPU): the :class:`~azgym.lm.base.LanguageModel` protocol on ``vllm.LLM``.

    pip install -e ".[vllm]"        # on a machine with a CUDA GPU

Prefix caching is on (``enable_prefix_caching=True``, vLLM's automatic prefix caching: KV blocks
keyed by the hash of their token prefix, LRU-evicted), the GPU counterpart of the transformers
backend's :class:`~azgym.lm.prefix_cache.PrefixCache`: the K candidates of a state (same prompt, ``n``
samples), the states sharing a question and the rounds of a search reuse their prompts' KV blocks in
``generate``. ``score`` does not: it reads prompt log-probs (``prompt_logprobs=0``) of prompt +
continuation, and vLLM caches no log-probs, so a request that asks for prompt log-probs skips
reading the prefix cache and prefills its whole prompt again (vLLM docs, "Prompt Logprobs with Prefix
Caching"; vllm-project/vllm#17251, #23399). Nor does this backend offer ``last_hidden``: the value
head runs on the transformers student (``LMValueFunction`` takes an ``HFBackend``). No GPU has run
this contract yet (``tests/test_lm_vllm.py``, ``bench_selfplay --device cuda``).

``generate`` maps to ``SamplingParams(n, max_tokens, stop, seed, temperature, logprobs=0)`` per
prompt. ``gpu_memory_utilization`` sets each model's share of the GPU, so several teachers (and a
training student) fit on one device.
``load_weights`` pushes a learner's weights into the engine (a vLLM-served student) and drops the
now stale prefix cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from azgym.lm.base import Generation, Prompt, TokenizerMixin

logger = logging.getLogger(__name__)


class VLLMBackend(TokenizerMixin):
    """A model served by vLLM in this process.

    Args:
        model: a Hub id or local directory (a short name from :mod:`azgym.lm.registry` is resolved).
        gpu_memory_utilization: the share of GPU memory this engine may take (weights + KV cache).
        dtype: vLLM dtype string (``"auto"``, ``"bfloat16"``, ...).
        max_model_len: context length to reserve KV cache for.
        name: a label for logs (default: ``model``).
        **engine_kwargs: passed to ``vllm.LLM``.
    """

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
        max_model_len: int = 4096,
        name: str = "",
        seed: int = 0,
        **engine_kwargs,
    ):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "the vLLM backend needs vllm and a CUDA GPU: pip install -e '.[vllm]' (or use the transformers "
                "backend, azgym.lm.HFBackend, on a CPU)"
            ) from err
        if not torch.cuda.is_available():
            raise RuntimeError("the vLLM backend needs a CUDA GPU; on a CPU use the transformers backend (HFBackend)")
        from azgym.lm.registry import resolve_model

        source = resolve_model(model)
        self.name = name or model
        engine_kwargs.setdefault("enable_prefix_caching", True)  # the search's shared prefixes are computed once
        self.llm = LLM(
            model=source,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{self.name}: the tokenizer defines no end-of-sequence token")
        self.eos_token_id = int(eos)

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
        from vllm import SamplingParams, TokensPrompt

        rows = self._per_prompt(prompts, n, max_tokens, temperature, seed)
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids, _, _, _ in rows]
        params = [
            SamplingParams(
                n=n,
                max_tokens=max(b, 1),
                temperature=max(t, 0.0),
                stop=list(stop) or None,
                include_stop_str_in_output=True,
                seed=None if s is None else int(s) % (2**63),
                logprobs=0,
            )
            for _, b, t, s in rows
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[self._generation(o) for o in out.outputs] for out in outputs]

    def _generation(self, out) -> Generation:
        ids = list(out.token_ids)
        logprobs = [float(step[t].logprob) for step, t in zip(out.logprobs or [], ids, strict=False)]
        if out.finish_reason == "length":
            reason = "length"
        elif out.stop_reason is None:  # the end-of-sequence token, which is not part of the response
            reason = "eos"
            if ids and ids[-1] == self.eos_token_id:
                ids, logprobs = ids[:-1], logprobs[:-1]
        else:
            reason = "stop"
        return Generation(self.decode(ids), tuple(ids), tuple(logprobs), reason)  # type: ignore[arg-type]

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        from vllm import SamplingParams, TokensPrompt

        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [(self._ids(p), self._ids(c)) for p, c in zip(prompts, continuations, strict=True)]
        inputs = [TokensPrompt(prompt_token_ids=p + c) for p, c in pairs]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        result = []
        for (p, c), out in zip(pairs, outputs, strict=True):
            steps = out.prompt_logprobs[len(p) :]
            result.append(np.array([step[t].logprob for step, t in zip(steps, c, strict=True)], dtype=np.float32))
        return result

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the served model's weights (names as in the transformers model) and reset the
        prefix cache, whose entries were computed with the old weights."""
        weights = list(weights)
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda model: model.load_weights(weights))
        else:  # older engines expose the model directly
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()


def merged_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A (peft) student's weights with LoRA merged in, named as in the plain transformers model."""
    merge = getattr(model, "merge_adapter", None)
    if merge is not None:
        merge()
    try:
        out = []
        for name, tensor in model.state_dict().items():
            if "lora_" in name or "value_head" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            out.append((name, tensor.detach().clone()))
        return out
    finally:
        if merge is not None:
            model.unmerge_adapter()
